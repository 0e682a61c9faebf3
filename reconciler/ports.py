"""The protocols the core and the app talk to; adapters implement them.

Keeping them here, between ``core`` and ``adapters``, lets the app wire any
source or backend without knowing its library (GitPython, sqlite3, the
Kubernetes client), and lets tests drive each stage with plain values.
Adapters turn library errors into ``TransientError`` (retry with backoff)
or ``TerminalError`` (report and stall); no library exception crosses a port.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.problems import Problem
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import AppliedWorkflow, WorkflowApply


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


class Backend(Protocol):
    """Where applied state lives (and, later, where Workflows run)."""

    def applied_workflows(self, *, owner: str) -> dict[WorkflowKey, AppliedWorkflow]:
        """The inventory: every non-deleted workflow this owner applied."""
        ...

    def all_workflows(self, *, include_deleted: bool = False) -> list[AppliedWorkflow]:
        """Every workflow, of any owner."""
        ...

    def get_workflow(self, key: WorkflowKey) -> AppliedWorkflow | None: ...

    def apply_workflow(self, request: WorkflowApply) -> AppliedWorkflow:
        """Create or update; idempotent for the same spec hash and path."""
        ...

    def apply_many(self, requests: Sequence[WorkflowApply]) -> list[AppliedWorkflow]:
        """Apply all requests, or none of them (raising) when any fails."""
        ...

    def delete_workflow(self, key: WorkflowKey, *, owner: str) -> None:
        """Mark deleted; refuses (TerminalError) a workflow of another owner."""
        ...

    def record_sync(self, record: SyncRecord) -> None: ...

    def last_sync(self) -> SyncRecord | None: ...
