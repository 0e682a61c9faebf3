"""Runs in the local SQLite store: what a step's start and end write, and what they do not."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler.adapters.local.codecs import from_text, to_text
from reconciler.adapters.local.runstore import StoredSpec, _maybe_text
from reconciler.adapters.local.store import LocalStore
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import Run, new_run, start_run, step_finished, step_started
from reconciler.ports import TerminalError

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class FakeClock:
    def now(self) -> datetime:
        return T0

    def monotonic(self) -> float:
        return 0.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "state", clock=FakeClock()) as store:
        yield store


def make_run(run_id: str = "wf-1") -> Run:
    spec = {"spec": {"dag": [{"name": "a"}, {"name": "b", "depends": ["a"]}]}}
    return new_run(
        workspace="public",
        run_id=RunId(run_id),
        name="wf",
        trigger="manual",
        requested_by="me",
        revision=Revision("r"),
        spec=spec,
        spec_hash="h",
        now=T0,
    )


def test_step_start_and_its_pid_are_one_transaction(store: LocalStore) -> None:
    run = start_run(make_run(), now=T0)
    store.create_runs([run])
    store.save_run(run)
    run = step_started(run, "a", now=T0 + timedelta(seconds=1))
    writes = store.writes
    store.save_run(run, steps=["a"], pids={"a": 4242})
    assert store.writes == writes + 1
    assert store.step_pids(run) == {"a": 4242}
    stored = store.get_run("public", "wf-1")
    assert stored is not None
    assert stored.step("a").state == "running"
    assert stored.step("a").started_at == T0 + timedelta(seconds=1)


def test_a_step_keeps_its_pid_when_it_ends(store: LocalStore) -> None:
    run = start_run(make_run(), now=T0)
    store.create_runs([run])
    run = step_started(run, "a", now=T0)
    store.save_run(run, steps=["a"], pids={"a": 4242})
    run = step_finished(run, "a", exit_code=3, now=T0 + timedelta(seconds=2))
    store.save_run(run, steps=["a", "b"])
    assert store.step_pids(run) == {"a": 4242}
    stored = store.get_run("public", "wf-1")
    assert stored is not None
    assert stored == run
    assert (stored.step("a").exit_code, stored.step("a").reason) == (3, "exited with code 3")


def test_the_run_row_is_written_only_when_it_changed(store: LocalStore) -> None:
    run = make_run()
    store.create_runs([run])
    run = start_run(run, now=T0)
    conn = store._conn
    before = conn.total_changes
    store.save_run(run, steps=[])
    assert conn.total_changes - before == 1  # pending -> running
    run = step_started(run, "a", now=T0)
    before = conn.total_changes
    store.save_run(run, steps=["a"], pids={"a": 1})
    assert conn.total_changes - before == 1  # the step's row alone
    run = step_finished(run, "a", exit_code=1, now=T0)  # fails the run
    before = conn.total_changes
    store.save_run(run, steps=["a", "b"])
    assert conn.total_changes - before == 3
    stored = store.get_run("public", "wf-1")
    assert stored is not None
    assert (stored.state, stored.reason) == ("failed", "step(s) failed: a")


def test_a_cancel_asked_for_elsewhere_is_kept(store: LocalStore, tmp_path: Path) -> None:
    run = step_started(start_run(make_run(), now=T0), "a", now=T0)
    store.create_runs([run])
    store.save_run(run)
    with LocalStore(tmp_path / "state", clock=FakeClock()) as other:
        assert other.request_cancel("public", "wf-1", reason="stop")
    store.save_run(step_finished(run, "a", exit_code=0, now=T0), steps=["a"])
    stored = store.get_run("public", "wf-1")
    assert stored is not None
    assert stored.cancel_requested


def test_saving_a_missing_run_is_an_error(store: LocalStore) -> None:
    with pytest.raises(TerminalError, match="does not exist"):
        store.save_run(start_run(make_run(), now=T0), steps=["a"])
    with pytest.raises(TerminalError, match="does not exist"):
        store.save_run(make_run(), steps=[])


def test_active_run_flags(store: LocalStore) -> None:
    first, second, done = make_run("wf-1"), make_run("wf-2"), make_run("wf-3")
    store.create_runs([first, second, done])
    store.save_run(start_run(first, now=T0))
    ended = step_started(start_run(done, now=T0), "a", now=T0)
    ended = step_finished(ended, "a", exit_code=1, now=T0)
    store.save_run(ended)
    assert store.request_cancel("public", "wf-2", reason="stop")
    assert store.active_run_flags() == {("public", "wf-1"): False, ("public", "wf-2"): True}


def test_existing_runs_are_found_in_every_workspace(store: LocalStore) -> None:
    """Many runs, two workspaces, one run id in both: each existing one is left alone."""
    old = [make_run(f"wf-{i}") for i in range(0, 1200, 2)]
    store.create_runs([*old, replace(make_run("wf-1"), workspace="team-a")])
    runs = [make_run(f"wf-{i}") for i in range(1200)]
    runs += [replace(run, workspace="team-a") for run in runs[:3]]
    created = store.create_runs(runs)
    assert created[:1200] == [i % 2 == 1 for i in range(1200)]
    assert created[1200:] == [True, False, True]
    assert store.get_run("team-a", "wf-1") is not None
    assert len(store.active_run_flags()) == 1200 + 3


def test_a_stored_spec_is_written_back_as_it_is(store: LocalStore) -> None:
    text = '{"spec":{"dag":[{"name":"a"},{"depends":["a"],"name":"b"}]},"x":"é"}'
    spec = StoredSpec(text, what="a spec")
    assert spec == json.loads(text)
    assert dict(spec) == json.loads(text)
    assert pickle.loads(pickle.dumps(spec)) == spec
    run = replace(make_run(), spec=spec)
    assert store.create_runs([run]) == [True]
    (stored_text,) = store._conn.execute("SELECT spec_json FROM runs").fetchone()
    assert stored_text == text
    assert store.get_run("public", "wf-1") == run


def test_a_stored_spec_that_is_no_json_object_is_an_error() -> None:
    with pytest.raises(TerminalError, match="not valid JSON"):
        dict(StoredSpec("{", what="spec of workflow public/wf"))
    with pytest.raises(TerminalError, match="spec of workflow public/wf is not a JSON object"):
        len(StoredSpec("[1]", what="spec of workflow public/wf"))


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0.replace(microsecond=7),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),  # strftime does not pad the year: to_text
        T0.astimezone(timezone(timedelta(hours=2))),  # not UTC: to_text converts it
    ],
)
def test_times_are_written_as_to_text_writes_them(moment: datetime) -> None:
    assert _maybe_text(moment) == to_text(moment)
    if moment.year >= 1000:
        assert from_text(_maybe_text(moment), what="t") == moment
