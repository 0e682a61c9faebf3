"""The run state machine, step by step, with time as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.core.names import Revision, RunId
from reconciler.core.runs import (
    Run,
    fail_run,
    new_run,
    ready_steps,
    request_cancel,
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
