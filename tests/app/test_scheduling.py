"""The scheduler over a real SQLite store with a fake clock: exactly once, across restarts."""

from __future__ import annotations

import random
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.adapters.local.runner import LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.app.running import Executor, ExecutorOptions
from reconciler.app.scheduling import Scheduler
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision
from reconciler.core.slots import CatchUpPolicy
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.moment = start
        self._mono = 0.0

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        self._mono += 0.001
        return self._mono

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


START = datetime(2026, 11, 28, 11, 59, 30, tzinfo=UTC)


def manifest(
    name: str, *, cron: str = "* * * * *", policy: str = "Allow", script: str = "true"
) -> str:
    return f"""version: v2alpha
name: {name}
type: workflow
spec:
  schedule:
    crons: ["{cron}"]
    timezone: UTC
    concurrencyPolicy: {policy}
  dag:
    - name: main
      spec:
        stack: container
        stackSpec:
          image: alpine:3.20
          command: [sh, -c, "{script}"]
"""


def apply(store: LocalStore, text: str) -> None:
    (loaded,) = load_manifest_file(
        "w.yaml", text.encode(), workspace="public", variables={}
    ).workflows
    desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="w.yaml")
    store.apply_workflow(
        WorkflowApply(desired, source="test", revision=Revision("r1"), owner="default")
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> LocalStore:
    return LocalStore(tmp_path / "state", clock=clock)


def slots_of(store: LocalStore, key: str) -> list[tuple[str, str]]:
    return sorted(
        (r.run_id, r.state)
        for r in store.runs_of(key, limit=10_000)  # type: ignore[arg-type]
    )


def test_every_slot_exactly_once_across_restarts(store: LocalStore, clock: FakeClock) -> None:
    apply(store, manifest("every-minute"))
    rng = random.Random(7)
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    ticks = 0
    while clock.moment < START + timedelta(hours=3):
        clock.advance(seconds=rng.choice([5, 20, 30, 45]))
        if rng.random() < 0.1:  # a crash: a new scheduler on the same store
            scheduler = Scheduler(store, clock=clock)
            scheduler.refresh()
        scheduler.tick()
        ticks += 1
    runs = slots_of(store, "public/every-minute")
    ids = [run_id for run_id, _ in runs]
    assert len(ids) == len(set(ids)) == 180  # 12:00 .. 14:59, one per minute
    assert {state for _, state in runs} == {"pending"}


def test_downtime_is_caught_up_by_policy(store: LocalStore, clock: FakeClock) -> None:
    apply(store, manifest("hourly", cron="0 * * * *"))
    scheduler = Scheduler(store, clock=clock, policy=CatchUpPolicy(mode="latest"))
    scheduler.refresh()
    clock.advance(minutes=1)  # 12:00:30: the 12:00 slot is on time
    scheduler.tick()
    clock.advance(hours=3, minutes=10)  # down from 12:00:30 to 15:10:30
    scheduler = Scheduler(store, clock=clock, policy=CatchUpPolicy(mode="latest"))
    scheduler.refresh()
    scheduler.tick()
    runs = dict(slots_of(store, "public/hourly"))
    assert runs == {
        "hourly-20261128t1200z": "pending",
        "hourly-20261128t1300z": "skipped",
        "hourly-20261128t1400z": "skipped",
        "hourly-20261128t1500z": "pending",  # the latest missed slot, within the deadline
    }
    skipped = store.get_run("public", "hourly-20261128t1300z")
    assert skipped is not None
    assert "missed" in skipped.reason


def test_schedule_change_starts_from_now(store: LocalStore, clock: FakeClock) -> None:
    apply(store, manifest("changing", cron="0 * * * *"))
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    clock.advance(minutes=1)
    scheduler.tick()
    clock.advance(hours=2)  # 14:00:30; then the schedule changes to every 30 minutes
    apply(store, manifest("changing", cron="*/30 * * * *"))
    scheduler.refresh()
    scheduler.tick()
    clock.advance(minutes=30)
    scheduler.tick()
    assert [r for r, _ in slots_of(store, "public/changing")] == [
        "changing-20261128t1200z",
        "changing-20261128t1430z",
    ]


def test_suspended_workflows_are_not_scheduled(store: LocalStore, clock: FakeClock) -> None:
    apply(store, manifest("paused"))
    store.set_suspended("public/paused", True)  # type: ignore[arg-type]
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    clock.advance(minutes=5)
    scheduler.tick()
    assert slots_of(store, "public/paused") == []


def test_workflows_sharing_a_schedule_keep_their_own_ledgers(
    store: LocalStore, clock: FakeClock
) -> None:
    apply(store, manifest("older"))
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    scheduler.tick()  # 11:59:30: older's ledger starts
    clock.advance(seconds=40)  # 12:00:10: newer is applied after the 12:00 slot
    apply(store, manifest("newer"))
    scheduler.refresh()
    scheduler.tick()
    clock.advance(minutes=1)
    scheduler.tick()
    assert [r for r, _ in slots_of(store, "public/older")] == [
        "older-20261128t1200z",
        "older-20261128t1201z",
    ]
    assert [r for r, _ in slots_of(store, "public/newer")] == ["newer-20261128t1201z"]


def test_forbid_is_applied_when_due_with_allow_workflows(
    store: LocalStore, clock: FakeClock
) -> None:
    apply(store, manifest("strict", policy="Forbid"))
    apply(store, manifest("loose", policy="Allow"))
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    scheduler.tick()
    clock.advance(minutes=1)  # 12:00:30; nothing executes, so the 12:00 runs stay pending
    scheduler.tick()
    clock.advance(minutes=1)
    scheduler.tick()
    assert slots_of(store, "public/strict") == [
        ("strict-20261128t1200z", "pending"),
        ("strict-20261128t1201z", "skipped"),
    ]
    assert slots_of(store, "public/loose") == [
        ("loose-20261128t1200z", "pending"),
        ("loose-20261128t1201z", "pending"),
    ]


def run_executor(executor: Executor, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            executor.step(wait=0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def wait_until(condition: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(
    ("policy", "first_state", "second_state"),
    [
        pytest.param("Forbid", "running", "skipped", id="forbid"),
        pytest.param("Replace", "cancelled", "running", id="replace"),
        pytest.param("Allow", "running", "running", id="allow"),
    ],
)
def test_concurrency_policy(
    tmp_path: Path, clock: FakeClock, policy: str, first_state: str, second_state: str
) -> None:
    store = LocalStore(tmp_path / "state", clock=clock)
    apply(store, manifest("slow", policy=policy, script="sleep 30"))
    runner = LocalStepRunner(
        tmp_path / "state", secrets=SecretStore(tmp_path / "state"), clock=clock
    )
    executor = Executor(store, runner, clock=clock, options=ExecutorOptions(idle_wait=0.05))
    scheduler = Scheduler(store, clock=clock, on_created=executor.notify)
    scheduler.refresh()
    stop = threading.Event()
    thread = run_executor(executor, stop)
    try:
        clock.advance(minutes=1)  # 12:00:30
        scheduler.tick()
        first = "slow-20261128t1200z"
        wait_until(
            lambda: (r := store.get_run("public", first)) is not None and r.state == "running"
        )
        clock.advance(minutes=1)  # 12:01:30
        scheduler.tick()
        second = "slow-20261128t1201z"
        wait_until(
            lambda: (r := store.get_run("public", first)) is not None and r.state == first_state
        )
        wait_until(
            lambda: (r := store.get_run("public", second)) is not None and r.state == second_state
        )
        if policy == "Forbid":
            skipped = store.get_run("public", second)
            assert skipped is not None
            assert skipped.reason == f"Forbid: run {first} is still active"
        if policy == "Replace":
            replaced = store.get_run("public", first)
            assert replaced is not None
            assert replaced.reason == f"replaced by run {second}"
    finally:
        for run in store.active_runs():
            store.request_cancel(run.workspace, run.run_id, reason="test over")
        executor.notify()
        wait_until(lambda: not store.active_runs())
        stop.set()
        thread.join(timeout=10)


def test_max_parallel_bounds_steps(tmp_path: Path) -> None:
    """The barrier workflow needs both steps at once: with a bound of 1 it cannot succeed."""
    from reconciler.adapters.clocks import SystemClock
    from tests.app.test_runs_e2e import BARRIER

    state = tmp_path / "state"
    clock = SystemClock()
    store = LocalStore(state, clock=clock)
    apply(store, BARRIER.replace("seq 100", "seq 10"))
    runner = LocalStepRunner(state, secrets=SecretStore(state), clock=clock)
    executor = Executor(store, runner, clock=clock, options=ExecutorOptions(max_parallel=1))
    from reconciler.core.names import RunId
    from reconciler.core.runs import new_run

    workflow = store.get_workflow("public/barrier")  # type: ignore[arg-type]
    assert workflow is not None
    run = new_run(
        workspace="public",
        run_id=RunId("barrier-m1"),
        name="barrier",
        trigger="manual",
        requested_by="test",
        revision=workflow.revision,
        spec=workflow.spec,
        spec_hash=workflow.spec_hash,
        now=clock.now(),
    )
    store.create_runs([run])
    executor.notify()
    while (current := store.get_run("public", "barrier-m1")) is not None and current.active:
        executor.step(wait=0.1)
    assert current is not None
    assert current.state == "failed"
    assert shutil.which("sh")


def test_suspend_from_another_process_is_seen_at_the_next_tick(
    store: LocalStore, clock: FakeClock, tmp_path: Path
) -> None:
    apply(store, manifest("paused-later"))
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    clock.advance(minutes=1)
    scheduler.tick()
    other = LocalStore(tmp_path / "state", clock=clock)  # `reconciler suspend` elsewhere
    other.set_suspended("public/paused-later", True)  # type: ignore[arg-type]
    clock.advance(minutes=3)
    scheduler.tick()
    assert [r for r, _ in slots_of(store, "public/paused-later")] == ["paused-later-20261128t1200z"]


def test_a_workflow_changed_during_a_round_is_decided_again_with_its_new_spec(
    store: LocalStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec changes after the round read the stamp: no run of the old spec, no lost slot."""
    apply(store, manifest("changing", script="echo old"))
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    scheduler.tick()  # 11:59:30: the ledger starts
    ledger = store.get_ledger("public/changing")  # type: ignore[arg-type]
    stale = store.workflows_stamp()
    monkeypatch.setattr(store, "workflows_stamp", lambda: stale)  # the change comes too late
    apply(store, manifest("changing", script="echo new"))
    clock.advance(minutes=1)  # 12:00:30
    decided, wait = scheduler.tick()
    assert decided.created == ()
    assert wait == 0.0  # at once: reload and decide again
    assert slots_of(store, "public/changing") == []
    assert store.get_ledger("public/changing") == ledger  # type: ignore[arg-type]
    decided, _ = scheduler.tick()
    assert [run.run_id for run in decided.created] == ["changing-20261128t1200z"]
    run = store.get_run("public", "changing-20261128t1200z")
    workflow = store.get_workflow("public/changing")  # type: ignore[arg-type]
    assert run is not None
    assert workflow is not None
    assert (run.spec, run.spec_hash) == (workflow.spec, workflow.spec_hash)
    assert "echo new" in str(run.spec)


def test_each_run_gets_its_own_workflow_spec_and_steps(store: LocalStore, clock: FakeClock) -> None:
    """Workflows share schedules and DAG shapes in the scheduler: not specs or steps."""
    apply(store, manifest("one", script="echo one"))
    apply(store, manifest("two", script="echo two"))
    apply(
        store,
        manifest("three", script="echo three")
        .replace(
            "  dag:\n",
            "  dag:\n    - name: first\n      spec: {stack: container, stackSpec: {image: a}}\n",
        )
        .replace("    - name: main\n", "    - name: main\n      depends: [first]\n"),
    )
    scheduler = Scheduler(store, clock=clock)
    scheduler.refresh()
    clock.advance(minutes=1)
    decided, _ = scheduler.tick()
    assert len(decided.created) == 3
    for name in ("one", "two", "three"):
        run = store.get_run("public", f"{name}-20261128t1200z")
        workflow = store.get_workflow(f"public/{name}")  # type: ignore[arg-type]
        assert run is not None
        assert workflow is not None
        assert (run.spec, run.spec_hash) == (workflow.spec, workflow.spec_hash)
        expected = [("first", ()), ("main", ("first",))] if name == "three" else [("main", ())]
        assert [(step.name, step.depends) for step in run.steps] == expected
