"""The run state machine, step by step, with time as a parameter."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.names import Revision, RunId
from reconciler.core.runs import (
    Run,
    changed_steps,
    fail_run,
    initial_steps,
    new_run,
    ready_steps,
    request_cancel,
    settle,
    skipped_run,
    start_run,
    step_finished,
    step_started,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def spec(edges: dict[str, list[str]]) -> dict[str, Any]:
    return {"spec": {"dag": [{"name": n, "depends": d} for n, d in edges.items()]}}


def make(edges: dict[str, list[str]]) -> Run:
    run = new_run(
        workspace="public",
        run_id=RunId("wf-1"),
        name="wf",
        trigger="manual",
        requested_by="me",
        revision=Revision("r"),
        spec=spec(edges),
        spec_hash="h",
        now=T0,
    )
    return start_run(run, now=T0)


def finish(run: Run, name: str, code: int) -> Run:
    run = step_started(run, name, now=T0)
    return step_finished(run, name, exit_code=code, now=T0 + timedelta(seconds=1))


def states(run: Run) -> dict[str, str]:
    return {s.name: s.state for s in run.steps}


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_steps_are_in_dependency_order() -> None:
    run = make({"publish": ["validate"], "validate": ["extract"], "extract": []})
    assert [s.name for s in run.steps] == ["extract", "validate", "publish"]


def test_diamond_succeeds() -> None:
    run = make(DIAMOND)
    assert ready_steps(run) == ["a"]
    run = finish(run, "a", 0)
    assert ready_steps(run) == ["b", "c"]
    run = finish(finish(run, "b", 0), "c", 0)
    assert ready_steps(run) == ["d"]
    run = finish(run, "d", 0)
    assert run.state == "succeeded"
    assert run.finished_at is not None


def test_failure_skips_dependents_and_lets_siblings_finish() -> None:
    run = make(DIAMOND)
    run = finish(run, "a", 0)
    run = step_started(step_started(run, "b", now=T0), "c", now=T0)
    run = step_finished(run, "b", exit_code=2, now=T0)
    assert run.state == "running"  # c still runs
    assert states(run) == {"a": "succeeded", "b": "failed", "c": "running", "d": "skipped"}
    assert run.step("d").reason == "upstream step 'b' failed"
    run = step_finished(run, "c", exit_code=0, now=T0)
    assert run.state == "failed"
    assert run.reason == "step(s) failed: b"


def test_nothing_new_starts_after_a_failure() -> None:
    run = make({"x": [], "y": []})
    run = step_started(run, "x", now=T0)
    run = step_finished(run, "x", exit_code=1, now=T0)
    assert run.state == "failed"
    assert states(run) == {"x": "failed", "y": "skipped"}


@pytest.mark.parametrize(
    ("started", "expected_run", "expected_steps"),
    [
        pytest.param(False, "cancelled", {"a": "cancelled", "b": "cancelled"}, id="pending-run"),
        pytest.param(True, "running", {"a": "running", "b": "pending"}, id="running-step"),
    ],
)
def test_cancel(started: bool, expected_run: str, expected_steps: dict[str, str]) -> None:
    run = new_run(
        workspace="public",
        run_id=RunId("wf-1"),
        name="wf",
        trigger="manual",
        requested_by="me",
        revision=Revision("r"),
        spec=spec({"a": [], "b": ["a"]}),
        spec_hash="h",
        now=T0,
    )
    if started:
        run = step_started(start_run(run, now=T0), "a", now=T0)
    run = request_cancel(run, now=T0, reason="stop")
    assert run.state == expected_run
    assert states(run) == expected_steps
    if started:
        run = step_finished(run, "a", exit_code=-15, now=T0)
        assert run.state == "cancelled"
        assert states(run) == {"a": "cancelled", "b": "cancelled"}


def test_fail_run_after_restart() -> None:
    run = step_started(make({"a": [], "b": ["a"]}), "a", now=T0)
    run = fail_run(run, now=T0, reason="daemon restarted")
    assert run.state == "failed"
    assert states(run) == {"a": "failed", "b": "skipped"}
    assert {s.reason for s in run.steps} == {"daemon restarted"}


def test_skipped_slot() -> None:
    run = new_run(
        workspace="public",
        run_id=RunId("wf-1"),
        name="wf",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("r"),
        spec=spec({"a": []}),
        spec_hash="h",
        now=T0,
        slot=T0,
    )
    run = skipped_run(run, reason="Forbid: run x is still active")
    assert (run.state, run.reason, states(run)) == (
        "skipped",
        "Forbid: run x is still active",
        {"a": "skipped"},
    )


def test_unknown_step_is_an_error() -> None:
    with pytest.raises(KeyError, match="no step 'zzz'"):
        step_started(make({"a": []}), "zzz", now=T0)


# --- the index kept step by step -------------------------------------------------


def reference_ready(run: Run) -> list[str]:
    """ready_steps as first written: one pass over every step."""
    if run.state != "running" or run.cancel_requested:
        return []
    if any(s.state == "failed" for s in run.steps):
        return []
    done = {s.name for s in run.steps if s.state == "succeeded"}
    return [s.name for s in run.steps if s.state == "pending" and done.issuperset(s.depends)]


def rebuilt(run: Run) -> Run:
    """The same run without anything cached on it."""
    return replace(run)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    size = draw(st.integers(min_value=1, max_value=9))
    names = [f"s{i}" for i in range(size)]
    return {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        for i, name in enumerate(names)
    }


@settings(max_examples=200, deadline=None)
@given(edges=dags(), choices=st.lists(st.integers(min_value=0, max_value=99), max_size=40))
def test_index_kept_step_by_step_matches_a_full_pass(
    edges: dict[str, list[str]], choices: list[int]
) -> None:
    run = make(edges)
    for choice in choices:
        ready = ready_steps(run)
        assert ready == reference_ready(run) == ready_steps(rebuilt(run))
        running = [s.name for s in run.steps if s.state == "running"]
        before = run
        if ready and (choice % 3 or not running):
            run = step_started(run, ready[choice % len(ready)], now=T0)
        elif running:
            name = running[choice % len(running)]
            run = step_finished(run, name, exit_code=0 if choice % 5 else 1, now=T0)
        else:
            break
        assert run == rebuilt(run)
        assert changed_steps(before, run) == [
            new.name for old, new in zip(before.steps, run.steps, strict=True) if old != new
        ]
        assert settle(rebuilt(run), now=T0) == run
    assert not run.active or ready_steps(run) or any(s.state == "running" for s in run.steps)


def test_changed_steps_of_a_failure_names_the_skipped_steps_too() -> None:
    run = step_started(make(DIAMOND), "a", now=T0)
    after = step_finished(run, "a", exit_code=1, now=T0)
    assert changed_steps(run, after) == ["a", "b", "c", "d"]
    assert changed_steps(after, after) == []


def test_dag_entry_is_the_step_of_the_spec() -> None:
    run = make({"publish": ["extract"], "extract": []})
    assert run.dag_entry("publish") == {"name": "publish", "depends": ["extract"]}
    with pytest.raises(KeyError, match="no step 'zzz'"):
        run.dag_entry("zzz")


def test_a_run_pickles_without_its_cache() -> None:
    run = step_started(make(DIAMOND), "a", now=T0)
    copy = pickle.loads(pickle.dumps(run))
    assert copy == run
    assert ready_steps(step_finished(copy, "a", exit_code=0, now=T0)) == ["b", "c"]


def test_new_run_is_the_run_its_init_makes() -> None:
    """new_run skips Run's __init__: it must still set every field, as __init__ would."""
    edges = {"b": ["a"], "a": []}
    slot = T0 - timedelta(minutes=1)
    made = new_run(
        workspace="public",
        run_id=RunId("wf-1"),
        name="wf",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("r"),
        spec=spec(edges),
        spec_hash="h",
        now=T0,
        slot=slot,
    )
    expected = Run(
        workspace="public",
        run_id=RunId("wf-1"),
        name="wf",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("r"),
        spec=spec(edges),
        spec_hash="h",
        created_at=T0,
        slot=slot,
        steps=initial_steps(spec(edges)),
    )
    assert made == expected
    assert vars(made) == vars(expected)
    assert [step.name for step in made.steps] == ["a", "b"]
    shared = new_run(
        workspace="public",
        run_id=RunId("wf-2"),
        name="wf",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("r"),
        spec=spec(edges),
        spec_hash="h",
        now=T0,
        steps=made.steps,
    )
    assert shared.steps is made.steps
    assert ready_steps(start_run(shared, now=T0)) == ["a"]
