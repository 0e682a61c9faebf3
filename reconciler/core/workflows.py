"""Applied Workflows as the backends keep them, and the lifecycle states they go through."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from reconciler.core.manifests import Workflow, normalized_spec, normalized_spec_json
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


def spec_text(spec: Mapping[str, Any], *, sort_keys: bool = True) -> str:
    """The JSON of a normalized spec: compact, UTF-8 as is, keys sorted (canonical) or
    in the manifest's own order.

    Read-only mappings (``MappingProxyType``) are written as objects; anything else
    that is not JSON raises ``TypeError``.
    """
    return json.dumps(
        spec, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=_mapping
    )


def _mapping(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of a normalized spec: sha256 of its canonical JSON."""
    return _digest(spec)


def _digest(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(spec_text(spec).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DesiredWorkflow:
    """A Workflow as git wants it: what the planner compares and the backend stores.

    The spec is kept as JSON text only (``spec_json``, keys in the manifest's order,
    as plans show them): a daemon holds one of these for every workflow of the
    repository between passes, and the text is a fraction of the memory of the
    decoded data (and what the local store writes). ``spec`` decodes it again on
    each use; only created and updated workflows need it. ``spec_hash`` is the hash
    of the canonical (sorted) JSON.
    """

    key: WorkflowKey
    workspace: str
    name: str
    path: str
    spec_json: str
    spec_hash: str

    @property
    def spec(self) -> dict[str, Any]:
        """The normalized spec, decoded from ``spec_json`` (a new copy each time)."""
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @classmethod
    def from_spec(
        cls,
        *,
        key: WorkflowKey,
        workspace: str,
        name: str,
        path: str,
        spec: Mapping[str, Any],
        spec_hash: str | None = None,
    ) -> DesiredWorkflow:
        """From decoded data; ``spec_hash`` defaults to the hash of the spec."""
        digest = spec_hash or _digest(spec)
        return cls(key, workspace, name, path, spec_text(spec, sort_keys=False), digest)

    @classmethod
    def from_manifest(cls, workflow: Workflow, *, workspace: str, path: str) -> DesiredWorkflow:
        # pydantic writes the JSON itself (a quarter of the time of json.dumps over
        # normalized_spec's data; tests/core/test_workflows.py checks they agree)
        return cls(
            WorkflowKey(f"{workspace}/{workflow.name}"),
            workspace,
            workflow.name,
            path,
            normalized_spec_json(workflow),
            _digest(normalized_spec(workflow)),
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
