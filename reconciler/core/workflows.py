"""Applied Workflows as the backends keep them, and the lifecycle states they go through."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from reconciler.core.manifests import Workflow, normalized_spec
from reconciler.core.names import Revision, WorkflowKey

WorkflowState = Literal["creating", "active", "running", "succeeded", "failed", "deleted"]
WORKFLOW_STATES: tuple[WorkflowState, ...] = (
    "creating",
    "active",
    "running",
    "succeeded",
    "failed",
    "deleted",
)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of a normalized spec: sorted keys, compact JSON, sha256."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DesiredWorkflow:
    """A Workflow as git wants it: what the planner compares and the backend stores."""

    key: WorkflowKey
    workspace: str
    name: str
    path: str
    spec: Mapping[str, Any]
    spec_hash: str

    @classmethod
    def from_manifest(cls, workflow: Workflow, *, workspace: str, path: str) -> DesiredWorkflow:
        spec = normalized_spec(workflow)
        return cls(
            key=WorkflowKey(f"{workspace}/{workflow.name}"),
            workspace=workspace,
            name=workflow.name,
            path=path,
            spec=spec,
            spec_hash=spec_hash(spec),
        )


@dataclass(frozen=True)
class WorkflowApply:
    """One create-or-update request to a backend."""

    desired: DesiredWorkflow
    source: str  # repository URL (credentials stripped) or directory
    revision: Revision
    owner: str  # the inventory this reconciler keeps; only its owner may delete


@dataclass(frozen=True)
class AppliedWorkflow:
    """A Workflow as a backend holds it."""

    key: WorkflowKey
    workspace: str
    name: str
    spec: Mapping[str, Any]
    spec_hash: str
    source: str
    path: str
    revision: Revision
    owner: str
    state: WorkflowState
    suspended: bool
    created_at: datetime
    updated_at: datetime


class InventoryEntry:
    """An applied workflow as the planner sees it: hash and path now, the spec only on demand.

    Planning a pass compares hashes; only an update needs the old spec (for
    the field-level diff), so a backend decodes it then and not for every
    workflow of a large inventory.
    """

    __slots__ = ("_load_spec", "_spec", "key", "path", "spec_hash")

    def __init__(
        self,
        key: WorkflowKey,
        *,
        path: str,
        spec_hash: str,
        load_spec: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.key = key
        self.path = path
        self.spec_hash = spec_hash
        self._load_spec = load_spec
        self._spec: Mapping[str, Any] | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        if self._spec is None:
            self._spec = self._load_spec()
        return self._spec
