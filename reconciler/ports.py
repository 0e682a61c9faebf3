"""The protocols the core and the app talk to; adapters implement them.

Keeping them here, between ``core`` and ``adapters``, lets the app wire any
source or backend without knowing its library (GitPython, sqlite3, the
Kubernetes client), and lets tests drive each stage with plain values.
Adapters turn library errors into ``TransientError`` (retry with backoff)
or ``TerminalError`` (report and stall); no library exception crosses a port.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from reconciler.core.names import Revision, RunId, WorkflowKey
from reconciler.core.problems import Problem
from reconciler.core.projections import StepEnvironment
from reconciler.core.runs import Run, RunState
from reconciler.core.schedules import ScheduledWorkflow
from reconciler.core.signing import CommitCheck
from reconciler.core.slots import Ledger
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import (
    AppliedWorkflow,
    InventoryEntry,
    WorkflowApply,
    WorkflowState,
)


class ReconcilerError(Exception):
    """Base of the errors adapters raise."""


class TransientError(ReconcilerError):
    """A fault that may pass (network, a locked database): retry with backoff."""


class TerminalError(ReconcilerError):
    """A fault retrying will not fix (bad credentials, a missing branch): report it."""


class Clock(Protocol):
    """Where time comes from: the system in production, a fake one in tests."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and timeouts."""
        ...


class Recorder(Protocol):
    """Where measurements go (Prometheus in the daemon); names follow Prometheus conventions
    without the ``reconciler_`` prefix, e.g. ``git_fetch_duration_seconds``."""

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        ...

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Put a value into a histogram."""
        ...

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        ...


class NullRecorder:
    """Measures nothing: for one-shot commands and tests."""

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Nothing to count into."""

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Nothing to observe into."""

    def set(self, name: str, value: float, **labels: str) -> None:
        """Nothing to set."""


NULL_RECORDER = NullRecorder()


@dataclass(frozen=True)
class CommitInfo:
    revision: Revision
    author: str  # "Name <email>"
    message: str
    committed_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """The files of one revision below the source's manifests path.

    ``files`` maps each regular file's path (relative to the manifests path,
    posix) to its blob id; symlinks resolving inside the repository appear
    as the file they point to. ``problems`` names entries that could not be
    read safely (a symlink leading outside, a submodule): a snapshot with
    problems is incomplete, and nothing may be deleted on its account.
    """

    revision: Revision
    files: Mapping[str, str]
    problems: tuple[Problem, ...] = ()
    commit: CommitInfo | None = None


class Source(Protocol):
    """Where desired state comes from."""

    @property
    def display_url(self) -> str:
        """The repository as people may see it: never with credentials."""
        ...

    def latest_revision(self) -> Revision:
        """The revision the branch points to now: one remote lookup, no fetch."""
        ...

    def snapshot(self, revision: Revision) -> Snapshot:
        """The files at revision, fetching it first when it is not here yet."""
        ...

    def read_blobs(self, blob_ids: Collection[str]) -> dict[str, bytes]:
        """The contents of blobs of a snapshot taken before."""
        ...

    def commits_between(self, old: Revision | None, new: Revision) -> list[CommitInfo]:
        """Commits reachable from new but not old (newest first); [new] when old is None
        or unrelated (a force-push)."""
        ...

    def check_commit(self, revision: Revision, allowed_signers: Path) -> CommitCheck:
        """Whether git finds a good signature by a key of the allowed-signers file on the
        commit, and which paths (below the manifests path) it changed."""
        ...


class Backend(Protocol):
    """Where applied state lives (and, later, where Workflows run)."""

    def applied_workflows(self, *, owner: str) -> dict[WorkflowKey, AppliedWorkflow]:
        """The inventory: every non-deleted workflow this owner applied."""
        ...

    def inventory(self, *, owner: str) -> dict[WorkflowKey, InventoryEntry]:
        """The inventory for planning: keys, paths and hashes, specs on demand."""
        ...

    def all_workflows(self, *, include_deleted: bool = False) -> list[AppliedWorkflow]:
        """Every workflow, of any owner."""
        ...

    def get_workflow(self, key: WorkflowKey) -> AppliedWorkflow | None: ...

    def workflow_states(self) -> dict[str, int]:
        """How many live workflows (of any owner) are in each state; cheap (for metrics)."""
        ...

    def apply_workflow(self, request: WorkflowApply) -> AppliedWorkflow:
        """Create or update; idempotent for the same spec hash and path."""
        ...

    def apply_many(
        self, requests: Sequence[WorkflowApply], *, read_back: bool = True
    ) -> list[AppliedWorkflow]:
        """Apply all requests, or none of them (raising) when any fails; the stored rows
        when read_back, else []."""
        ...

    def delete_workflow(self, key: WorkflowKey, *, owner: str) -> None:
        """Mark deleted; refuses (TerminalError) a workflow of another owner."""
        ...

    def report_problems(self, problems: Mapping[WorkflowKey, str], *, owner: str) -> None:
        """After a pass that planned: the owner's workflows git could not bring up to date
        (an invalid manifest, kept as applied; a failed apply) and why. Every other workflow
        of the owner is healthy again. Writes only what changed."""
        ...

    def record_sync(self, record: SyncRecord) -> None: ...

    def get_value(self, key: str) -> str | None:
        """A small durable value (report watermarks, who created a workflow)."""
        ...

    def set_value(self, key: str, value: str) -> None: ...

    def add_event(self, key: str, run_id: str | None, kind: str, message: str) -> None:
        """Something people should see happened: key is "workspace/name", or a word such as
        "sync" for the reconciler itself."""
        ...

    def events(self, *, key: str | None = None, limit: int = 100) -> list[Event]:
        """Events of one workflow (or all), newest first."""
        ...

    def last_sync(self) -> SyncRecord | None: ...


@dataclass(frozen=True)
class Event:
    """Something that happened to a workflow or a run, for people (``reconciler events``)."""

    at: datetime
    key: str  # "workspace/name" of the workflow
    run_id: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class StepLaunch:
    """Everything a backend needs to start one step of one run."""

    run: Run
    step: str
    environment: StepEnvironment
    defaults: Mapping[str, str]  # the run's default projection values for this step


@dataclass(frozen=True)
class StepResult:
    workspace: str
    run_id: RunId
    step: str
    exit_code: int | None  # None when it never ran or was lost
    reason: str  # empty for a clean exit
    finished_at: datetime


class StepRunner(Protocol):
    """Where steps run: local processes, or Kubernetes Jobs."""

    steps_outlive_daemon: bool  # Jobs go on when the daemon restarts; processes do not

    def start(self, launch: StepLaunch) -> int | None:
        """Start a step; return its local pid when there is one. TerminalError: cannot start."""
        ...

    def stop(self, workspace: str, run_id: str, step: str) -> None:
        """Stop a running step (its result still arrives through wait_results)."""
        ...

    def wait_results(self, timeout: float) -> list[StepResult]:
        """Steps that ended, waiting up to timeout seconds for the first."""
        ...

    def volume_exists(self, workspace: str, volume_id: str) -> bool:
        """Whether a volume exists for steps of workflows in workspace."""
        ...

    def read_log(self, workspace: str, run_id: str, step: str) -> bytes | None:
        """A step's log so far (None when it never started)."""
        ...

    def stop_orphan(self, workspace: str, run_id: str, step: str, pid: int) -> bool:
        """Stop a step process left by a previous daemon; True when one was running."""
        ...

    def reattach(self, workspace: str, run_id: str, step: str) -> bool:
        """Expect the result of a step a previous daemon started, when steps outlive the
        daemon (Kubernetes Jobs); False when it cannot be followed (local processes)."""
        ...


class RunBackend(Backend, Protocol):
    """A backend that also keeps runs, the schedule ledger and an event log."""

    def workflows_stamp(self) -> str:
        """A value that changes whenever any workflow is written (cheap to read)."""
        ...

    def set_suspended(self, key: WorkflowKey, suspended: bool) -> AppliedWorkflow: ...

    def set_state(self, key: WorkflowKey, state: WorkflowState) -> AppliedWorkflow: ...

    def scheduled_workflows(self) -> list[ScheduledWorkflow]:
        """Every workflow with a schedule, neither suspended nor deleted, by key.

        As the scheduler keeps them: schedules, no specs (the backend decodes
        one spec at a time, never all of them at once).
        """
        ...

    def workflow_specs(
        self, keys: Sequence[WorkflowKey]
    ) -> dict[WorkflowKey, tuple[str, Mapping[str, Any]]]:
        """The spec hash and spec of each of these workflows that exists (not deleted).

        In one read: the scheduler copies the specs into the runs of a busy
        minute, and keeps none of them in memory in between.
        """
        ...

    def create_runs(
        self,
        runs: Sequence[Run],
        *,
        ledgers: Sequence[tuple[WorkflowKey, Ledger]] = (),
        events: Sequence[tuple[str, str | None, str, str]] = (),
    ) -> list[bool]:
        """Insert the runs that do not exist yet, and move ledgers, atomically."""
        ...

    def save_run(
        self,
        run: Run,
        *,
        steps: Sequence[str] | None = None,
        event: tuple[str, str] | None = None,
        pids: Mapping[str, int] | None = None,
    ) -> None:
        """Store the run and its steps (all, or just ``steps``), the event and the steps'
        process ids, in one transaction."""
        ...

    def get_run(self, workspace: str, run_id: str) -> Run | None: ...

    def runs_of(
        self, key: WorkflowKey, *, limit: int = 20, states: Sequence[RunState] | None = None
    ) -> list[Run]: ...

    def active_runs(self) -> list[Run]: ...

    def active_run_flags(self) -> dict[tuple[str, str], bool]:
        """Every pending or running run, oldest first: (workspace, run id) -> whether a
        cancel was asked for; without specs or steps, so it is cheap to ask often."""
        ...

    def last_finished_run(self, key: WorkflowKey) -> Run | None: ...

    def get_ledger(self, key: WorkflowKey) -> Ledger | None: ...

    def get_ledgers(self, keys: Sequence[WorkflowKey]) -> dict[WorkflowKey, Ledger]: ...

    def set_ledger(self, key: WorkflowKey, ledger: Ledger) -> None: ...

    def request_cancel(self, workspace: str, run_id: str, *, reason: str) -> bool: ...

    def runs_finished_after(self, mark: tuple[datetime, str] | None, *, limit: int) -> list[Run]:
        """Runs that ended after mark (finished_at, "workspace/run id"), oldest first."""
        ...

    def set_step_pid(self, run: Run, step: str, pid: int | None) -> None: ...

    def step_pids(self, run: Run) -> dict[str, int]: ...


class StatusSink(Protocol):
    """Where status reports go: a git branch."""

    def push(
        self,
        writes: Mapping[str, bytes | None],
        *,
        message: str,
        prune: Callable[[Mapping[str, str]], Iterable[str]] | None = None,
    ) -> str:
        """Commit writes (None deletes) and push as one commit; return its id."""
        ...
