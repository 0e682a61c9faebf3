"""The run half of the ``RunBackend`` port, on every backend.

Runs and their steps, the schedule ledger moved together with the runs it
decided, cancel requests, the queries the executor, the scheduler and the
status reporter make, and the small key-value store of report marks.
There is no port to read events back: the tests only check that writing
them is accepted.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reconciler.core.runs import (
    Run,
    fail_run,
    request_cancel,
    skipped_run,
    start_run,
    step_finished,
    step_started,
    wait_run,
)
from reconciler.core.slots import Ledger, schedule_hash
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import DesiredWorkflow
from reconciler.ports import RunBackend, TerminalError
from tests.contract import OWNER, T0, at, desired, finished, key, make_run, request
from tests.contract.conftest import Capabilities

SLOT = datetime(2026, 11, 28, 12, 5, tzinfo=UTC)
HASH = schedule_hash(["*/5 * * * *"], "Europe/Berlin")


def apply(backend: RunBackend, name: str, workspace: str = "public") -> DesiredWorkflow:
    wanted = request(name, workspace=workspace)
    backend.apply_workflow(wanted)
    return wanted.desired


@pytest.fixture
def nightly(backend: RunBackend) -> DesiredWorkflow:
    return apply(backend, "nightly")


@pytest.fixture
def weekly(backend: RunBackend) -> DesiredWorkflow:
    return apply(backend, "weekly")


@pytest.fixture
def elsewhere(backend: RunBackend) -> DesiredWorkflow:
    """A workflow of the same name as ``nightly`` in another workspace."""
    return apply(backend, "nightly", workspace="team-a")


def stored(backend: RunBackend, run: Run) -> Run:
    found = backend.get_run(run.workspace, run.run_id)
    assert found is not None, f"run {run.workspace}/{run.run_id} is missing"
    return found


def ident(run: Run) -> str:
    return f"{run.workspace}/{run.run_id}"


def ids(runs: list[Run]) -> list[str]:
    return [run.run_id for run in runs]


# -- creating and reading runs ----------------------------------------------------------------


def test_create_runs_creates_the_new_runs(backend: RunBackend, nightly: DesiredWorkflow) -> None:
    manual = make_run(nightly, created_at=at(0))
    scheduled = make_run(nightly, slot=SLOT, created_at=at(1))
    assert backend.create_runs([manual, scheduled]) == [True, True]
    assert stored(backend, manual) == manual
    assert stored(backend, scheduled) == scheduled
    assert backend.create_runs([]) == []


def test_create_runs_leaves_an_existing_run_alone(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    run = make_run(nightly, slot=SLOT)
    assert backend.create_runs([run]) == [True]
    clash = skipped_run(replace(run, requested_by="someone else"), reason="missed")
    assert backend.create_runs([clash]) == [False]
    assert stored(backend, run) == run
    fresh = make_run(nightly, slot=SLOT + timedelta(minutes=5))
    assert backend.create_runs([clash, fresh, skipped_run(fresh, reason="x")]) == [
        False,
        True,
        False,  # the same id twice in one call: the first wins
    ]
    assert stored(backend, fresh) == fresh


def test_get_run_of_an_unknown_run_is_none(
    backend: RunBackend, nightly: DesiredWorkflow, elsewhere: DesiredWorkflow
) -> None:
    run = make_run(nightly)
    backend.create_runs([run])
    assert backend.get_run("public", "nightly-mffffffffffff") is None
    assert backend.get_run("team-a", run.run_id) is None  # the id is per workspace
    assert backend.get_run("nowhere", run.run_id) is None


def _variants(workflow: DesiredWorkflow) -> dict[str, tuple[Run, Run]]:
    """Runs in every shape a run is stored in: name -> (as created, as later saved)."""
    manual = make_run(workflow, created_at=at(0))
    scheduled = make_run(workflow, slot=SLOT, created_at=at(0))
    running = step_started(start_run(manual, now=at(1)), "fetch", now=at(1.5))
    succeeded = start_run(manual, now=at(1))
    for offset, step in enumerate(("fetch", "build", "publish")):
        succeeded = step_started(succeeded, step, now=at(2 + offset))
        succeeded = step_finished(succeeded, step, exit_code=0, now=at(2.5 + offset))
    return {
        "pending": (manual, manual),
        "scheduled": (scheduled, scheduled),
        "waiting": (manual, wait_run(manual, reason="waiting for workflow public/weekly ⏳")),
        "running": (manual, running),
        "succeeded": (manual, succeeded),
        "failed": (manual, step_finished(running, "fetch", exit_code=3, now=at(4.000001))),
        "signalled": (
            manual,
            step_finished(running, "fetch", exit_code=-15, now=at(5), reason="killed by SIGTERM"),
        ),
        "lost": (manual, fail_run(running, now=at(6), reason="lost: the daemon restarted")),
        "cancelling": (manual, request_cancel(running, now=at(7), reason="cancelled by alice")),
        "cancelled": (manual, request_cancel(manual, now=at(8), reason="replaced by run x")),
        "skipped": (scheduled, skipped_run(scheduled, reason="missed: the daemon was down")),
    }


VARIANTS = sorted(_variants(desired("probe")))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("how", ["created", "saved"])
def test_a_run_is_kept_field_for_field(
    backend: RunBackend, nightly: DesiredWorkflow, variant: str, how: str
) -> None:
    """Created as it is, or created as it began and saved later: every field comes back."""
    created, later = _variants(nightly)[variant]
    if how == "created":
        assert backend.create_runs([later]) == [True]
    else:
        assert backend.create_runs([created]) == [True]
        backend.save_run(later)
    assert stored(backend, later) == later


def test_scheduled_workflows_are_the_live_ones_with_a_schedule(
    backend: RunBackend, nightly: DesiredWorkflow, weekly: DesiredWorkflow
) -> None:
    elsewhere = apply(backend, "nightly", workspace="team-a")
    unscheduled = desired("manual-only", cron=None)
    backend.apply_workflow(replace(request("manual-only"), desired=unscheduled))
    apply(backend, "paused")
    backend.set_suspended(key("paused"), True)
    apply(backend, "gone")
    backend.delete_workflow(key("gone"), owner=OWNER)
    listed = backend.scheduled_workflows()
    assert [w.key for w in listed] == sorted([nightly.key, weekly.key, elsewhere.key])
    for scheduled in listed:
        applied = backend.get_workflow(scheduled.key)
        assert applied is not None
        assert (scheduled.workspace, scheduled.name) == (applied.workspace, applied.name)
        assert (scheduled.revision, scheduled.spec_hash) == (applied.revision, applied.spec_hash)
        assert scheduled.created_at == applied.created_at
        assert (scheduled.crons, scheduled.timezone) == (("*/5 * * * *",), "Europe/Berlin")
        assert scheduled.policy == "Allow"
        assert scheduled.dag == (("fetch", ()), ("build", ("fetch",)), ("publish", ("build",)))
    # Equal schedules and DAG shapes are one object each, whatever the number of workflows.
    assert listed[0].crons is listed[1].crons
    assert listed[0].dag is listed[2].dag
    backend.set_suspended(key("paused"), False)
    assert key("paused") in {w.key for w in backend.scheduled_workflows()}


def test_workflow_specs_of_the_workflows_that_exist(
    backend: RunBackend, nightly: DesiredWorkflow, elsewhere: DesiredWorkflow
) -> None:
    assert backend.workflow_specs([]) == {}
    specs = backend.workflow_specs([nightly.key, key("never"), elsewhere.key])
    assert specs.keys() == {nightly.key, elsewhere.key}
    spec_hash, spec = specs[nightly.key]
    assert spec_hash == nightly.spec_hash
    assert spec == nightly.spec
    assert json.loads(json.dumps(spec, default=dict)) == json.loads(json.dumps(nightly.spec))
    backend.delete_workflow(nightly.key, owner=OWNER)
    assert backend.workflow_specs([nightly.key, elsewhere.key]).keys() == {elsewhere.key}


def test_a_run_made_from_workflow_specs_is_kept(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    """The scheduler copies what ``workflow_specs`` gives into its runs, as it is."""
    ((spec_hash, spec),) = backend.workflow_specs([nightly.key]).values()
    run = replace(make_run(nightly, slot=SLOT), spec=spec, spec_hash=spec_hash)
    missed = skipped_run(replace(run, run_id=f"{run.run_id}-x"), reason="missed")
    assert backend.create_runs([run, missed]) == [True, True]
    assert stored(backend, run) == run
    assert stored(backend, run).spec == nightly.spec
    assert stored(backend, missed) == missed


def test_times_keep_their_microseconds_and_come_back_in_utc(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    berlin = datetime(2026, 11, 28, 13, 0, 0, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    run = make_run(nightly, created_at=berlin, run_id="nightly-mtimes0000001")
    run = step_started(start_run(run, now=berlin), "fetch", now=berlin)
    backend.create_runs([run])
    back = stored(backend, run)
    assert back == run  # equal instants
    for moment in (back.created_at, back.started_at, back.step("fetch").started_at):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)
        assert moment.microsecond == 1


def test_naive_times_are_refused_and_move_no_ledger(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    backend.set_ledger(nightly.key, Ledger(SLOT, HASH))
    naive = make_run(nightly, created_at=T0.replace(tzinfo=None), run_id="nightly-mnaive0000001")
    with pytest.raises(TerminalError):
        backend.create_runs(
            [naive], ledgers=[(nightly.key, Ledger(SLOT + timedelta(minutes=5), HASH))]
        )
    assert backend.get_ledger(nightly.key) == Ledger(SLOT, HASH)
    assert backend.get_run("public", naive.run_id) is None


# -- ledgers and events -----------------------------------------------------------------------


def test_ledgers_move_with_the_runs(
    backend: RunBackend, nightly: DesiredWorkflow, weekly: DesiredWorkflow
) -> None:
    assert backend.get_ledger(nightly.key) is None
    run = make_run(nightly, slot=SLOT)
    first = Ledger(SLOT, HASH)
    assert backend.create_runs([run], ledgers=[(nightly.key, first)]) == [True]
    assert backend.get_ledger(nightly.key) == first
    assert stored(backend, run) == run
    # The runs existed already (a second replica, a retried write): the ledger still moves.
    second = Ledger(SLOT + timedelta(minutes=5), "another-hash")
    assert backend.create_runs([run], ledgers=[(nightly.key, second)]) == [False]
    assert backend.get_ledger(nightly.key) == second
    # Only a ledger (every slot was missed, say).
    third = Ledger(SLOT + timedelta(minutes=10), HASH)
    assert backend.create_runs([], ledgers=[(weekly.key, third)]) == []
    assert backend.get_ledgers([nightly.key, weekly.key]) == {
        nightly.key: second,
        weekly.key: third,
    }


def test_many_ledgers_at_once(
    backend: RunBackend, nightly: DesiredWorkflow, weekly: DesiredWorkflow
) -> None:
    assert backend.get_ledgers([]) == {}
    assert backend.get_ledgers([nightly.key, weekly.key]) == {}
    backend.set_ledger(nightly.key, Ledger(SLOT, HASH))
    assert backend.get_ledgers([weekly.key, nightly.key, key("never")]) == {
        nightly.key: Ledger(SLOT, HASH)
    }
    assert backend.get_ledger(weekly.key) is None
    assert backend.get_ledger(key("never")) is None


def test_set_ledger_replaces_it(backend: RunBackend, nightly: DesiredWorkflow) -> None:
    backend.set_ledger(nightly.key, Ledger(SLOT, HASH))
    later = Ledger(datetime(2027, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), "h2")
    backend.set_ledger(nightly.key, later)
    assert backend.get_ledger(nightly.key) == later
    earlier = Ledger(SLOT - timedelta(days=1), HASH)  # a ledger may move back (a reset)
    backend.set_ledger(nightly.key, earlier)
    assert backend.get_ledger(nightly.key) == earlier


def test_events_are_accepted(backend: RunBackend, nightly: DesiredWorkflow) -> None:
    run = make_run(nightly, slot=SLOT)
    created = backend.create_runs(
        [run],
        ledgers=[(nightly.key, Ledger(SLOT, HASH))],
        events=[
            (nightly.key, run.run_id, "RunCreated", "slot 12:05 UTC"),
            (nightly.key, None, "SlotsMissed", "3 slots missed ✗"),
        ],
    )
    assert created == [True]
    assert backend.create_runs([], events=[(nightly.key, None, "Note", "")]) == []
    backend.add_event(nightly.key, run.run_id, "RunCancelRequested", "by alice")
    backend.add_event(nightly.key, None, "WorkflowSuspended", "by bob")
    backend.add_event("public/never-applied", None, "Note", "an event of no workflow")
    started = start_run(run, now=at(1))
    backend.save_run(started, steps=[], event=("RunStarted", "started"))
    assert stored(backend, run) == started
    # `reconciler delete --force` records the deletion after it.
    backend.delete_workflow(nightly.key, owner=OWNER)
    backend.add_event(nightly.key, None, "Deleted", "deleted by alice (--force)")


# -- saving runs ------------------------------------------------------------------------------


def test_save_run_writes_the_run_and_all_its_steps(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    run = make_run(nightly)
    backend.create_runs([run])
    run = start_run(run, now=at(1))
    for offset, step in enumerate(("fetch", "build")):
        run = step_started(run, step, now=at(2 + offset))
        run = step_finished(run, step, exit_code=0, now=at(2.5 + offset))
    backend.save_run(run)
    assert stored(backend, run) == run
    run = step_finished(step_started(run, "publish", now=at(5)), "publish", exit_code=0, now=at(6))
    assert run.state == "succeeded"
    backend.save_run(run, event=("RunSucceeded", "all steps succeeded"))
    assert stored(backend, run) == run


def test_save_run_writes_only_the_steps_named(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    created = make_run(nightly)
    backend.create_runs([created])
    started = start_run(created, now=at(1))
    backend.save_run(started, steps=[])  # the run alone
    back = stored(backend, started)
    assert (back.state, back.started_at) == ("running", at(1))
    assert back.steps == created.steps
    run = step_finished(step_started(started, "fetch", now=at(2)), "fetch", exit_code=0, now=at(3))
    run = step_started(run, "build", now=at(3))
    backend.save_run(run, steps=["build"])
    back = stored(backend, run)
    assert back.step("build") == run.step("build")
    assert back.step("fetch") == created.step("fetch")  # not named: as stored before
    assert back.step("publish") == created.step("publish")
    backend.save_run(run, steps=["fetch", "publish"])
    assert stored(backend, run) == run


def test_save_run_keeps_a_cancel_asked_for_elsewhere(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    run = step_started(start_run(make_run(nightly), now=at(1)), "fetch", now=at(2))
    backend.create_runs([run])
    assert backend.request_cancel(run.workspace, run.run_id, reason="cancelled by alice")
    # The executor saves the run it holds, which has not heard of the cancel yet.
    run = step_finished(run, "fetch", exit_code=0, now=at(3))
    backend.save_run(run, steps=["fetch"])
    back = stored(backend, run)
    assert back.cancel_requested is True
    assert back.step("fetch") == run.step("fetch")
    assert backend.active_run_flags() == {(run.workspace, run.run_id): True}


@pytest.mark.parametrize("steps", [None, ["fetch"], []], ids=["all", "some", "none"])
def test_save_run_of_a_missing_run_is_terminal(
    backend: RunBackend, nightly: DesiredWorkflow, steps: list[str] | None
) -> None:
    run = step_started(start_run(make_run(nightly), now=at(1)), "fetch", now=at(2))
    with pytest.raises(TerminalError):
        backend.save_run(run, steps=steps)
    assert backend.get_run(run.workspace, run.run_id) is None


def test_step_pids(backend: RunBackend, nightly: DesiredWorkflow, caps: Capabilities) -> None:
    run = start_run(make_run(nightly), now=at(1))
    other = start_run(make_run(nightly, created_at=at(1)), now=at(1))
    backend.create_runs([run, other])
    assert backend.step_pids(run) == {}
    run = step_started(run, "fetch", now=at(2))
    backend.save_run(run, steps=["fetch"], pids={"fetch": 4242})
    pids_after_start = backend.step_pids(run)
    run = step_finished(run, "fetch", exit_code=0, now=at(3))
    backend.save_run(run, steps=["fetch", "build"])  # no pids given: the pid is kept
    pids_after_end = backend.step_pids(run)
    backend.set_step_pid(run, "build", 4343)
    pids_after_set = backend.step_pids(run)
    backend.set_step_pid(run, "fetch", None)
    pids_after_clear = backend.step_pids(run)
    backend.save_run(run, steps=[], pids={"publish": 4444})  # a step not among those saved
    pids_after_unsaved_step = backend.step_pids(run)
    assert stored(backend, run) == run  # pids never show in the run
    if caps.tracks_pids:
        assert pids_after_start == pids_after_end == {"fetch": 4242}
        assert pids_after_set == {"fetch": 4242, "build": 4343}
        assert pids_after_clear == {"build": 4343}
        assert pids_after_unsaved_step == {"build": 4343, "publish": 4444}
    else:
        assert pids_after_start == pids_after_end == pids_after_set == {}
        assert pids_after_clear == pids_after_unsaved_step == {}
    assert backend.step_pids(other) == {}


# -- querying runs ----------------------------------------------------------------------------


@pytest.fixture
def history(
    backend: RunBackend,
    nightly: DesiredWorkflow,
    weekly: DesiredWorkflow,
    elsewhere: DesiredWorkflow,
) -> dict[str, Run]:
    """Runs of three workflows, created a minute apart in a scrambled order."""
    runs = {
        "n-succeeded": finished(make_run(nightly, created_at=at(60)), at_=at(400)),
        "n-failed": finished(make_run(nightly, created_at=at(120)), state="failed", at_=at(300)),
        "n-running": step_started(
            start_run(make_run(nightly, created_at=at(180)), now=at(181)), "fetch", now=at(182)
        ),
        "n-skipped": finished(
            make_run(nightly, slot=SLOT, created_at=at(240)), state="skipped", at_=at(240)
        ),
        "n-pending": make_run(nightly, created_at=at(300)),
        "n-cancelled": finished(
            make_run(nightly, created_at=at(0)), state="cancelled", at_=at(200)
        ),
        "w-pending": make_run(weekly, created_at=at(90)),
        "w-succeeded": finished(make_run(weekly, created_at=at(30)), at_=at(500)),
        "e-running": start_run(make_run(elsewhere, created_at=at(150)), now=at(151)),
        "e-succeeded": finished(make_run(elsewhere, created_at=at(10)), at_=at(600)),
    }
    order = ["n-pending", "e-running", "n-succeeded", "w-succeeded", "n-skipped", "n-failed"]
    order += sorted(set(runs) - set(order))
    assert backend.create_runs([runs[name] for name in order]) == [True] * len(runs)
    return runs


def test_runs_of_one_workflow_newest_first(backend: RunBackend, history: dict[str, Run]) -> None:
    nightly = [
        history[n]
        for n in ("n-pending", "n-skipped", "n-running", "n-failed", "n-succeeded", "n-cancelled")
    ]
    assert backend.runs_of(key("nightly")) == nightly
    assert backend.runs_of(key("nightly"), limit=2) == nightly[:2]
    assert backend.runs_of(key("weekly")) == [history["w-pending"], history["w-succeeded"]]
    assert backend.runs_of(key("nightly", "team-a")) == [
        history["e-running"],
        history["e-succeeded"],
    ]
    assert backend.runs_of(key("never")) == []


def test_runs_of_filtered_by_state(backend: RunBackend, history: dict[str, Run]) -> None:
    nightly = key("nightly")
    assert backend.runs_of(nightly, states=["pending", "running"]) == [
        history["n-pending"],
        history["n-running"],
    ]
    assert backend.runs_of(nightly, states=["succeeded", "failed", "cancelled"], limit=2) == [
        history["n-failed"],
        history["n-succeeded"],
    ]
    assert backend.runs_of(nightly, states=["skipped"]) == [history["n-skipped"]]
    assert backend.runs_of(key("weekly"), states=["running"]) == []
    assert backend.runs_of(nightly, states=[]) == []  # no state wanted: no run


def test_runs_of_keeps_twenty_by_default(backend: RunBackend, nightly: DesiredWorkflow) -> None:
    runs = [make_run(nightly, slot=SLOT + timedelta(minutes=5 * n)) for n in range(23)]
    backend.create_runs(runs)  # one busy minute: created at the same moment
    newest = sorted(runs, key=lambda run: run.run_id, reverse=True)
    assert ids(backend.runs_of(nightly.key)) == ids(newest[:20])  # ties: the greater id first
    assert ids(backend.runs_of(nightly.key, limit=100)) == ids(newest)


def test_active_runs_oldest_first(backend: RunBackend, history: dict[str, Run]) -> None:
    active = [history[n] for n in ("w-pending", "e-running", "n-running", "n-pending")]
    assert backend.active_runs() == active
    assert backend.active_run_flags() == {(r.workspace, r.run_id): False for r in active}
    assert list(backend.active_run_flags()) == [(r.workspace, r.run_id) for r in active]


def test_active_runs_of_one_moment_by_id(backend: RunBackend, nightly: DesiredWorkflow) -> None:
    runs = [make_run(nightly, slot=SLOT + timedelta(minutes=5 * n)) for n in (2, 0, 1)]
    backend.create_runs(runs)
    expected = sorted(ident(run) for run in runs)
    assert [ident(run) for run in backend.active_runs()] == expected
    assert [f"{ws}/{run_id}" for ws, run_id in backend.active_run_flags()] == expected


def test_no_runs(backend: RunBackend) -> None:
    assert backend.active_runs() == []
    assert backend.active_run_flags() == {}
    assert backend.runs_finished_after(None, limit=10) == []
    assert backend.last_finished_run(key("nightly")) is None


def test_request_cancel_flags_an_active_run(backend: RunBackend, history: dict[str, Run]) -> None:
    pending, running = history["n-pending"], history["n-running"]
    assert backend.request_cancel("public", pending.run_id, reason="cancelled by alice")
    assert backend.request_cancel("public", running.run_id, reason="replaced by run x")
    # The backend only flags the run (and says why): the executor ends it.
    assert stored(backend, pending) == replace(
        pending, cancel_requested=True, reason="cancelled by alice"
    )
    assert stored(backend, running) == replace(
        running, cancel_requested=True, reason="replaced by run x"
    )
    flags = backend.active_run_flags()
    assert flags[("public", pending.run_id)] is True
    assert flags[("public", running.run_id)] is True
    assert flags[("public", history["w-pending"].run_id)] is False
    assert [r.run_id for r in backend.active_runs() if r.cancel_requested] == [
        running.run_id,
        pending.run_id,
    ]
    # Asked again while still active: True again, the newer reason kept.
    assert backend.request_cancel("public", pending.run_id, reason="cancelled by bob")
    assert stored(backend, pending).reason == "cancelled by bob"


def test_request_cancel_of_a_finished_or_unknown_run(
    backend: RunBackend, history: dict[str, Run]
) -> None:
    for name in ("n-succeeded", "n-failed", "n-cancelled", "n-skipped"):
        run = history[name]
        assert backend.request_cancel(run.workspace, run.run_id, reason="too late") is False
        assert stored(backend, run) == run
    assert backend.request_cancel("public", "nightly-mffffffffffff", reason="x") is False
    assert backend.request_cancel("team-a", history["n-pending"].run_id, reason="x") is False
    assert set(backend.active_run_flags().values()) == {False}


def test_last_finished_run_is_the_one_that_ended_last(
    backend: RunBackend, history: dict[str, Run], nightly: DesiredWorkflow
) -> None:
    # Created second but ended last; skipped runs never ran, active ones have not ended.
    assert backend.last_finished_run(key("nightly")) == history["n-succeeded"]
    assert backend.last_finished_run(key("weekly")) == history["w-succeeded"]
    assert backend.last_finished_run(key("nightly", "team-a")) == history["e-succeeded"]
    assert backend.last_finished_run(key("never")) is None
    ended = finished(history["n-running"], state="failed", at_=at(700))
    backend.save_run(ended)
    assert backend.last_finished_run(key("nightly")) == ended
    newest = finished(make_run(nightly, slot=SLOT + timedelta(hours=1)), at_=at(800))
    backend.create_runs([newest])
    backend.save_run(finished(history["n-pending"], state="skipped", at_=at(900)))
    later_skip = replace(
        skipped_run(make_run(nightly, slot=SLOT + timedelta(hours=2)), reason="missed"),
        finished_at=at(1000),
    )
    backend.create_runs([later_skip])
    assert backend.last_finished_run(key("nightly")) == newest


def test_last_finished_run_ignores_runs_only_skipped(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    backend.create_runs([skipped_run(make_run(nightly, slot=SLOT), reason="missed")])
    backend.create_runs([make_run(nightly)])
    assert backend.last_finished_run(nightly.key) is None


def test_runs_finished_after_a_mark(backend: RunBackend, history: dict[str, Run]) -> None:
    """Every run that ended (any workflow, skipped ones too), by (finished_at, ident)."""
    ended = sorted(
        (run for run in history.values() if run.finished_at is not None),
        key=lambda run: (run.finished_at, ident(run)),
    )
    assert ids(ended) == ids(
        [history[n] for n in ("n-cancelled", "n-skipped", "n-failed", "n-succeeded")]
        + [history["w-succeeded"], history["e-succeeded"]]
    )
    assert backend.runs_finished_after(None, limit=100) == ended
    assert backend.runs_finished_after(None, limit=2) == ended[:2]
    # A reporter pages through them: each mark is the last run it saw.
    seen: list[Run] = []
    mark: tuple[datetime, str] | None = None
    while page := backend.runs_finished_after(mark, limit=4):
        seen += page
        last = page[-1]
        assert last.finished_at is not None
        # The mark goes through text, as the reporter keeps it.
        text = json.dumps([last.finished_at.isoformat(), ident(last)])
        finished_at, last_ident = json.loads(text)
        mark = (datetime.fromisoformat(finished_at), last_ident)
    assert seen == ended
    assert backend.runs_finished_after((at(10_000), ""), limit=10) == []
    # A run ending later comes after the mark.
    now_ended = finished(history["n-running"], at_=at(5000))
    backend.save_run(now_ended)
    assert backend.runs_finished_after(mark, limit=10) == [now_ended]


def test_runs_finished_at_one_moment_are_ordered_by_ident(
    backend: RunBackend, nightly: DesiredWorkflow, weekly: DesiredWorkflow
) -> None:
    moment = at(100)
    runs = [
        finished(make_run(weekly, created_at=at(1)), at_=moment),
        finished(make_run(nightly, created_at=at(2)), at_=moment),
        finished(make_run(nightly, created_at=at(3)), at_=moment),
    ]
    backend.create_runs(runs)
    ordered = sorted(runs, key=ident)
    assert backend.runs_finished_after(None, limit=10) == ordered
    # The mark is exclusive: runs at the same moment with a greater ident still come.
    assert backend.runs_finished_after((moment, ident(ordered[0])), limit=10) == ordered[1:]
    assert backend.runs_finished_after((moment, ident(ordered[2])), limit=10) == []
    assert backend.runs_finished_after((moment, ""), limit=10) == ordered
    before = moment - timedelta(microseconds=1)
    assert backend.runs_finished_after((before, "~"), limit=10) == ordered


# -- values and the workflows stamp -----------------------------------------------------------


def test_values(backend: RunBackend) -> None:
    assert backend.get_value("status.runs-mark") is None
    mark = json.dumps(["2026-11-28T12:00:00.123456+00:00", "public/nightly-m0123456789ab"])
    backend.set_value("status.runs-mark", mark)
    backend.set_value("status.sync-mark", "")
    assert backend.get_value("status.runs-mark") == mark
    assert backend.get_value("status.sync-mark") == ""
    backend.set_value("status.runs-mark", "ünïcødé ✓\nsecond line")
    assert backend.get_value("status.runs-mark") == "ünïcødé ✓\nsecond line"
    assert backend.get_value("status.other") is None


def test_run_writes_leave_the_workflows_stamp(
    backend: RunBackend, nightly: DesiredWorkflow
) -> None:
    stamp = backend.workflows_stamp()
    run = make_run(nightly, slot=SLOT)
    backend.create_runs([run], ledgers=[(nightly.key, Ledger(SLOT, HASH))])
    backend.save_run(step_started(start_run(run, now=at(1)), "fetch", now=at(1)))
    backend.request_cancel(run.workspace, run.run_id, reason="x")
    backend.set_ledger(nightly.key, Ledger(SLOT + timedelta(minutes=5), HASH))
    backend.add_event(nightly.key, run.run_id, "Note", "note")
    backend.set_value("status.runs-mark", "x")
    backend.record_sync(
        SyncRecord(started_at=at(0), finished_at=at(1), revision=None, result="unchanged")
    )
    assert backend.workflows_stamp() == stamp
