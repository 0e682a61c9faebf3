"""The executor over the local backend: what a step costs in writes, and when it is durable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.dag_overhead import chain_manifest
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.runner import LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.app.running import Executor
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import new_run
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply
from reconciler.ports import StepLaunch


def create_run(store: LocalStore, text: str, run_id: str) -> None:
    (loaded,) = load_manifest_file(
        "chain.yaml", text.encode(), workspace="public", variables={}
    ).workflows
    desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="c")
    store.apply_workflow(WorkflowApply(desired, source="t", revision=Revision("r"), owner="t"))
    run = new_run(
        workspace="public",
        run_id=RunId(run_id),
        name="chain",
        trigger="manual",
        requested_by="test",
        revision=Revision("r"),
        spec=desired.spec,
        spec_hash=desired.spec_hash,
        now=SystemClock().now(),
    )
    store.create_runs([run])


def run_all(executor: Executor) -> None:
    executor.notify()
    for _ in range(2000):
        executor.step(wait=0.5)
        if not executor.runs:
            return
    raise AssertionError("the run did not end")


class CheckingRunner(LocalStepRunner):
    """Before each step starts, read what another connection sees of its upstream steps."""

    def __init__(self, state: Path) -> None:
        clock = SystemClock()
        super().__init__(state, secrets=SecretStore(state), clock=clock)
        self.reader = LocalStore(state, clock=clock)
        self.seen: list[tuple[str, str, int | None, bool, int | None]] = []

    def start(self, launch: StepLaunch) -> int | None:
        stored = self.reader.get_run(launch.run.workspace, launch.run.run_id)
        assert stored is not None
        pids = self.reader.step_pids(stored)
        for upstream in stored.step(launch.step).depends:
            step = stored.step(upstream)
            self.seen.append(
                (upstream, step.state, step.exit_code, step.finished_at is not None, pids[upstream])
            )
        return super().start(launch)


def test_a_step_is_durable_before_the_next_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = LocalStore(state, clock=SystemClock())
    create_run(store, chain_manifest(4), "chain-1")
    runner = CheckingRunner(state)
    run_all(Executor(store, runner, clock=SystemClock()))
    assert [(name, s, code, ended) for name, s, code, ended, _ in runner.seen] == [
        (f"s{i}", "succeeded", 0, True) for i in range(3)
    ]
    assert all(pid > 0 for *_, pid in runner.seen)
    stored = store.get_run("public", "chain-1")
    assert stored is not None
    assert stored.state == "succeeded"
    assert (state / "runs" / "public" / "chain-1" / "s3").is_dir()
    assert (state / "runs" / "public" / "chain-1" / "s3.log").read_bytes() == b""


def test_a_step_costs_two_write_transactions(tmp_path: Path) -> None:
    """Started with its pid in one, ended in the other: a longer chain costs two per step."""
    writes = []
    for steps in (2, 6):
        state = tmp_path / f"state-{steps}"
        store = LocalStore(state, clock=SystemClock())
        create_run(store, chain_manifest(steps), "chain-1")
        before = store.writes
        runner = LocalStepRunner(state, secrets=SecretStore(state), clock=SystemClock())
        run_all(Executor(store, runner, clock=SystemClock()))
        writes.append(store.writes - before)
    assert writes[1] - writes[0] == 2 * 4


def test_a_run_in_progress_is_not_read_again_on_each_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    store = LocalStore(state, clock=SystemClock())
    create_run(store, chain_manifest(5), "chain-1")
    reads: list[str] = []
    get_run = store.get_run
    monkeypatch.setattr(store, "get_run", lambda *key: reads.append(key[1]) or get_run(*key))
    monkeypatch.setattr(store, "active_runs", lambda: pytest.fail("active runs read in full"))
    executor = Executor(
        store,
        LocalStepRunner(state, secrets=SecretStore(state), clock=SystemClock()),
        clock=SystemClock(),
    )
    executor.notify()
    for _ in range(2000):
        executor.notify()  # a reload on every round
        executor.step(wait=0.5)
        if not executor.runs:
            break
    assert reads == ["chain-1"]
    stored = get_run("public", "chain-1")
    assert stored is not None
    assert stored.state == "succeeded"
