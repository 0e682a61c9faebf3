"""The status branch under a racing writer: no run report is ever lost.

A real bare remote; the reconciler's ``StatusReporter`` + ``StatusWriter``
flushing in a loop (as the daemon's status thread does); several threads
finishing runs the ways the daemon does (an executor ending runs step by
step, a run failed outright, a scheduler recording skipped slots), each
with the lag real writers have between the moment a run ends and the
moment that end is stored; and another writer that commits and pushes its
own files to the same ``status`` branch continuously. At the end every
finished run has its report on the branch and every file the other writer
pushed is still there, with its content.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.adapters.statusbranch import StatusWriter
from reconciler.app.reporting import RUNS_MARK, ReportingOptions, StatusReporter
from reconciler.app.syncing import Syncer, SyncOptions
from reconciler.core.names import RunId, WorkflowKey
from reconciler.core.runs import (
    Run,
    fail_run,
    new_run,
    skipped_run,
    start_run,
    step_finished,
    step_started,
)
from reconciler.core.workflows import AppliedWorkflow
from reconciler.ports import ReconcilerError
from tests.app.gitfixtures import Remote, git
from tests.reliability.conftest import report

RUNS_PER_FINISHER = 50
FINISHERS = ("executor", "failer", "scheduler")
OTHER_WRITER_PAUSE = 0.3  # seconds, at most, between two of the other writer's pushes
MAX_STORE_LAG = 0.05  # seconds between a run's end and its save (watch delivery, queues, locks)
MAX_RUN_PAUSE = 0.1  # seconds between two runs a finisher ends (runs take time)

pytestmark = pytest.mark.timeout(240)


@dataclass
class OtherWriter:
    """Someone else's tool: commits one new file per loop to the status branch and pushes."""

    clone: Path
    stop: threading.Event
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    pushed: dict[str, str] = field(default_factory=dict)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        serial = 0
        while not self.stop.is_set():
            try:
                self._once(serial)
            except (subprocess.CalledProcessError, OSError) as exc:  # pragma: no cover
                self.errors.append(str(exc))
                return
            serial += 1
            # continuously, but not in a tight loop: a writer that pushes faster than a
            # fetch-build-push cycle takes would starve any optimistic writer (see below)
            self.stop.wait(self.rng.uniform(0.05, OTHER_WRITER_PAUSE))

    def _once(self, serial: int) -> None:
        fetched = subprocess.run(
            ["git", "fetch", "-q", "origin", "+refs/heads/status:refs/remotes/origin/status"],
            cwd=self.clone,
            capture_output=True,
        )
        if fetched.returncode == 0:
            git(self.clone, "checkout", "-q", "-B", "status", "origin/status")
        elif not (self.clone / ".git" / "refs" / "heads" / "status").exists():
            git(self.clone, "checkout", "-q", "--orphan", "status")
            git(self.clone, "rm", "-rfq", "--ignore-unmatch", ".")
        path = f"other/note-{serial:05d}.txt"
        content = f"note {serial} written by another tool\n"
        target = self.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        git(self.clone, "add", path)
        git(self.clone, "commit", "-qm", f"other writer: note {serial}")
        pushed = subprocess.run(
            ["git", "push", "-q", "origin", "HEAD:refs/heads/status"],
            cwd=self.clone,
            capture_output=True,
            text=True,
        )
        if pushed.returncode == 0:
            self.pushed[path] = content
        else:
            self.rejected += 1


class Finisher:
    """Creates runs of its workflows and ends them, one way, storing each end after a lag."""

    def __init__(
        self,
        kind: str,
        store: LocalStore,
        workflows: list[AppliedWorkflow],
        clock: SystemClock,
        seed: int,
    ) -> None:
        self.kind = kind
        self.store = store
        self.workflows = workflows
        self.clock = clock
        self.rng = random.Random(seed)
        self.finished: list[Run] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            for serial in range(RUNS_PER_FINISHER):
                workflow = self.workflows[serial % len(self.workflows)]
                self.finished.append(self._one(workflow, serial))
                time.sleep(self.rng.uniform(0, MAX_RUN_PAUSE))
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.errors.append(exc)

    def _lag(self) -> None:
        time.sleep(self.rng.uniform(0, MAX_STORE_LAG))

    def _one(self, workflow: AppliedWorkflow, serial: int) -> Run:
        run = new_run(
            workspace=workflow.workspace,
            run_id=RunId(f"{workflow.name}-{self.kind[0]}{serial:011d}"),
            name=workflow.name,
            trigger="manual" if self.kind != "scheduler" else "schedule",
            requested_by=self.kind,
            revision=workflow.revision,
            spec=workflow.spec,
            spec_hash=workflow.spec_hash,
            now=self.clock.now(),
        )
        if self.kind == "scheduler":  # a slot recorded as skipped: it ends as it is created
            run = skipped_run(run, reason="Forbid: a run is still active")
            self._lag()
            self.store.create_runs([run])
            return run
        self.store.create_runs([run])
        run = start_run(run, now=self.clock.now())
        self.store.save_run(run)
        if self.kind == "failer":
            run = fail_run(run, now=self.clock.now(), reason="daemon restarted while running")
        else:
            for step in run.steps:
                run = step_started(run, step.name, now=self.clock.now())
            for step in run.steps:
                run = step_finished(run, step.name, exit_code=0, now=self.clock.now())
        assert not run.active
        self._lag()
        self.store.save_run(run)
        return run


def branch_files(bare: Path) -> dict[str, str]:
    """{path: blob id} of the status branch's tip."""
    out = git(bare, "ls-tree", "-r", "status")
    files = {}
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        files[path] = meta.split()[2]
    return files


def synced_examples(root: Path) -> tuple[Remote, LocalStore, SystemClock]:
    """A bare remote with the examples on main, synced into a local store."""
    remote = Remote(root)
    remote.copy_examples()
    state = root / "state"
    clock = SystemClock()
    store = LocalStore(state, clock=clock)
    syncer = Syncer(
        GitSource(remote.url, cache_dir=state / "git"),
        store,
        clock=clock,
        options=SyncOptions(owner="default"),
        sleep=time.sleep,
    )
    assert syncer.sync().result == "succeeded"
    return remote, store, clock


def status_reporter(
    remote: Remote, store: LocalStore, clock: SystemClock, state: Path
) -> tuple[StatusWriter, StatusReporter]:
    """The daemon's reporter and writer, with its default backoff, on the real remote."""
    writer = StatusWriter(remote.url, source_branch="main", cache_dir=state / "git")
    reporter = StatusReporter(
        store,
        writer,
        clock=clock,
        read_log=lambda workspace, run_id, step: None,
        secret_values=tuple,
        # retention would rightly remove old reports: keep them all, to count them
        options=ReportingOptions(keep_succeeded=100_000, keep_failed=100_000),
    )
    return writer, reporter


def finished_run(workflow: AppliedWorkflow, run_id: str, *, ended: datetime) -> Run:
    run = new_run(
        workspace=workflow.workspace,
        run_id=RunId(run_id),
        name=workflow.name,
        trigger="manual",
        requested_by="tester",
        revision=workflow.revision,
        spec=workflow.spec,
        spec_hash=workflow.spec_hash,
        now=ended - timedelta(seconds=1),
    )
    return fail_run(start_run(run, now=run.created_at), now=ended, reason="test")


def test_a_run_stored_after_a_newer_one_was_reported_is_reported(tmp_path: Path) -> None:
    """The deterministic form of the race above: the end is stored after a newer end was
    pushed. Reported once, and only once."""
    remote, store, clock = synced_examples(tmp_path)
    workflow = store.get_workflow(WorkflowKey("public/daily-report"))
    assert workflow is not None
    _, reporter = status_reporter(remote, store, clock, tmp_path / "state")
    now = clock.now()
    late = finished_run(workflow, "daily-report-mlate00000000", ended=now - timedelta(seconds=5))
    newer = finished_run(workflow, "daily-report-mnewer0000000", ended=now)
    store.create_runs([replace(late, state="running", finished_at=None), newer])
    first = reporter.flush()
    assert first is not None
    assert first.runs == 1
    store.save_run(late)  # its end was decided before the newer one's, stored after
    second = reporter.flush()
    assert second is not None
    assert second.runs == 1
    files = branch_files(remote.bare)
    for run in (late, newer):
        assert f"workflows/public/daily-report/runs/{run.run_id}.json" in files
    assert reporter.flush() is None  # nothing is reported twice
    # a mark in the format before the late window (exclusive) is still read
    store.set_value(RUNS_MARK, json.dumps([now.isoformat(), f"public/{newer.run_id}"]))
    assert reporter.flush() is None


def test_no_report_lost_while_another_writer_pushes(tmp_path: Path) -> None:
    remote, store, clock = synced_examples(tmp_path)
    workflows = [w for w in store.all_workflows() if w.workspace == "public"]
    assert len(workflows) >= 4
    writer, reporter = status_reporter(remote, store, clock, tmp_path / "state")

    stop_other = threading.Event()
    clone = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote.bare), str(clone))
    git(clone, "config", "user.name", "Other Tool")
    git(clone, "config", "user.email", "other@example.com")
    git(clone, "config", "commit.gpgsign", "false")
    other = OtherWriter(clone, stop_other)

    stop_reporting = threading.Event()
    failed_flushes: list[str] = []

    def flush_loop() -> None:  # the daemon's status thread, with a short flush interval
        while not stop_reporting.wait(0.05):
            try:
                reporter.flush()
            except ReconcilerError as exc:  # kept and retried, as the daemon does
                failed_flushes.append(str(exc))

    finishers = [
        Finisher(kind, store, workflows, clock, seed) for seed, kind in enumerate(FINISHERS)
    ]
    threads = [threading.Thread(target=f.run, name=f.kind) for f in finishers]
    other_thread = threading.Thread(target=other.run, name="other-writer")
    reporting = threading.Thread(target=flush_loop, name="status")
    other_thread.start()
    reporting.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # the other writer keeps pushing while the reporter catches up
    time.sleep(1.0)
    stop_reporting.set()
    reporting.join(timeout=120)
    stop_other.set()
    other_thread.join(timeout=60)
    for _ in range(5):  # the daemon's last flush on the way out (retried if it lost a race)
        try:
            reporter.flush()
            break
        except ReconcilerError as exc:
            failed_flushes.append(str(exc))

    assert not [e for f in finishers for e in f.errors]
    assert not other.errors
    runs = [run for f in finishers for run in f.finished]
    files = branch_files(remote.bare)
    expected = {f"workflows/{r.workspace}/{r.name}/runs/{r.run_id}.json" for r in runs}
    found = expected & files.keys()
    lost = sorted(expected - found)
    other_intact = {
        path
        for path, content in other.pushed.items()
        if path in files and git(remote.bare, "cat-file", "blob", files[path]) + "\n" == content
    }
    report(
        "status-races",
        {
            "reports expected": len(expected),
            "reports found": len(found),
            "reports lost": len(lost),
            "rejected pushes retried (StatusWriter.retry_count)": writer.retry_count,
            "status pushes": writer.push_count,
            "flushes that gave up (kept for the next)": len(failed_flushes),
            "other writer: files pushed": len(other.pushed),
            "other writer: files intact": len(other_intact),
            "other writer: pushes rejected": other.rejected,
        },
    )
    assert not lost, f"{len(lost)} run reports never reached the branch: {lost[:5]}"
    assert other_intact == other.pushed.keys()
    assert other.pushed, "the other writer never got a push in: no race was tested"
    assert writer.retry_count > 0 or other.rejected > 0, "the writers never raced"
