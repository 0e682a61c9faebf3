"""The record of one reconcile pass: what was seen, planned, done and what went wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from reconciler.core.names import Revision

SyncResult = Literal["succeeded", "failed", "blocked", "unchanged"]


@dataclass(frozen=True)
class SyncRecord:
    """Stored by the backend after every pass that did work (and after failures)."""

    started_at: datetime
    finished_at: datetime
    revision: Revision | None
    result: SyncResult
    summary: dict[str, int] = field(default_factory=dict)  # created/updated/moved/deleted/...
    plan: list[dict[str, Any]] = field(default_factory=list)  # the actions, as plain data
    errors: list[dict[str, Any]] = field(default_factory=list)  # problems, per file
    message: str = ""  # why a pass failed or was blocked, for people
    # the commit read (revision, author, message, committed_at) and the paths that changed
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()
