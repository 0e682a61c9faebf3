"""The custom resources as plain dicts, and back: Workflow, WorkflowRun.

Pure functions: no requests here, so every object the backend sends can be
built and checked against the CRD schemas in tests.

A Workflow's ``spec.manifest`` is the normalized manifest (defaults filled),
the same data the local backend stores, so both backends hash and diff the
same thing. Ownership is the ``reconciler.dev/owner`` label (selectable)
plus the ``app.kubernetes.io/managed-by`` label; source, path, revision and
spec hash are annotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.adapters.kubernetes.client import Resource
from reconciler.core.manifests import renormalized, without_nulls
from reconciler.core.names import Revision, RunId, WorkflowKey
from reconciler.core.runs import Run, RunState, StepRun, Trigger, new_run
from reconciler.core.slots import Ledger
from reconciler.core.workflows import AppliedWorkflow, WorkflowApply, WorkflowState
from reconciler.ports import TerminalError

GROUP = "reconciler.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
WORKFLOWS = Resource(GROUP, VERSION, "workflows", "Workflow")
WORKFLOW_RUNS = Resource(GROUP, VERSION, "workflowruns", "WorkflowRun")

FIELD_MANAGER = "workflow-reconciler"  # server-side apply of manifests from git
CLI_MANAGER = "workflow-reconciler-cli"  # suspend/resume and cancel from the CLI
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "workflow-reconciler"
OWNER = f"{GROUP}/owner"
WORKFLOW = f"{GROUP}/workflow"
RUN = f"{GROUP}/run"
STEP = f"{GROUP}/step"
STATE = f"{GROUP}/state"
SOURCE = f"{GROUP}/source"
PATH = f"{GROUP}/path"
REVISION = f"{GROUP}/revision"
SPEC_HASH = f"{GROUP}/spec-hash"
REASON = f"{GROUP}/reason"  # why a run was created already decided (a skipped slot)
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"

Obj = dict[str, Any]

_TRIGGERS = {"schedule": "schedule", "manual": "manual"}


def to_time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with microseconds (what the runs' timings need)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).astimezone(UTC)


def required_time(value: Any, what: str) -> datetime:
    parsed = from_time(value)
    if parsed is None:
        raise ValueError(f"{what} is missing")
    return parsed


# -- Workflow -----------------------------------------------------------------------


def workflow_object(request: WorkflowApply) -> Obj:
    """The applied configuration of one Workflow (server-side apply under FIELD_MANAGER)."""
    desired = request.desired
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {
            "name": desired.name,
            "namespace": desired.workspace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, OWNER: request.owner},
            "annotations": {
                SOURCE: request.source,
                PATH: desired.path,
                REVISION: request.revision,
                SPEC_HASH: desired.spec_hash,
            },
        },
        # Nulls left out: a server may drop them; reading renormalizes (see manifest_of).
        "spec": {"manifest": without_nulls(dict(desired.spec))},
    }


def manifest_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The normalized manifest an object holds, nulls and defaults restored."""
    stored = (obj.get("spec") or {}).get("manifest") or {}
    try:
        return renormalized(stored)
    except ValueError as exc:
        metadata = obj.get("metadata") or {}
        raise TerminalError(
            f"{obj.get('kind')} {metadata.get('namespace')}/{metadata.get('name')}: {exc}; "
            "it was changed outside the reconciler: fix the manifest in git and let it re-apply"
        ) from exc


def workflow_owner(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(OWNER) or "")


def workflow_key(obj: Mapping[str, Any]) -> WorkflowKey:
    metadata = obj.get("metadata") or {}
    return WorkflowKey(f"{metadata.get('namespace')}/{metadata.get('name')}")


def applied_from_object(obj: Mapping[str, Any]) -> AppliedWorkflow:
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    created = required_time(metadata.get("creationTimestamp"), "creationTimestamp")
    state: WorkflowState = status.get("state") or "creating"
    return AppliedWorkflow(
        key=workflow_key(obj),
        workspace=str(metadata.get("namespace")),
        name=str(metadata.get("name")),
        spec=manifest_of(obj),
        spec_hash=str(annotations.get(SPEC_HASH) or ""),
        source=str(annotations.get(SOURCE) or ""),
        path=str(annotations.get(PATH) or ""),
        revision=Revision(str(annotations.get(REVISION) or "")),
        owner=workflow_owner(obj),
        state=state,
        suspended=bool(spec.get("suspend")),
        created_at=created,
        updated_at=from_time(status.get("updatedAt")) or created,
    )


def condition(
    kind: str, status: bool, *, reason: str, message: str, now: datetime, generation: int
) -> Obj:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }


def applied_status(obj: Mapping[str, Any], request: WorkflowApply, *, now: datetime) -> Obj:
    """The status after an apply: Ready, the revision, the generation it saw."""
    metadata = obj.get("metadata") or {}
    generation = int(metadata.get("generation") or 1)
    old = obj.get("status") or {}
    state = old.get("state") or "active"
    if state == "creating":
        state = "active"
    return {
        "state": state,
        "observedGeneration": generation,
        "lastAppliedRevision": request.revision,
        "updatedAt": to_time(now),
        "conditions": [
            condition(
                "Ready",
                True,
                reason="Applied",
                message=f"applied {request.desired.path} at {request.revision[:12]}",
                now=now,
                generation=generation,
            ),
            condition(
                "Reconciling", False, reason="Applied", message="", now=now, generation=generation
            ),
            condition(
                "Stalled", False, reason="Applied", message="", now=now, generation=generation
            ),
        ],
    }


def ledger_from_status(status: Mapping[str, Any]) -> Ledger | None:
    last = from_time(status.get("lastScheduleTime"))
    if last is None or not status.get("scheduleHash"):
        return None
    return Ledger(last_slot=last, schedule_hash=str(status["scheduleHash"]))


def ledger_status(ledger: Ledger) -> Obj:
    return {"lastScheduleTime": to_time(ledger.last_slot), "scheduleHash": ledger.schedule_hash}


# -- WorkflowRun ----------------------------------------------------------------------


def run_labels(run: Run, owner: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        OWNER: owner,
        WORKFLOW: run.name,
        STATE: run.state,
    }


def run_object(run: Run, *, owner: str, workflow_uid: str | None) -> Obj:
    """A WorkflowRun to create; its status is written separately (status subresource)."""
    metadata: Obj = {
        "name": run.run_id,
        "namespace": run.workspace,
        "labels": run_labels(run, owner),
    }
    if run.state != "pending" or run.reason:  # in the object itself: the status write that
        metadata["annotations"] = {REASON: run.reason}  # follows may never happen (a crash)
    if workflow_uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "Workflow",
                "name": run.name,
                "uid": workflow_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkflowRun",
        "metadata": metadata,
        "spec": {
            "workflow": run.name,
            "trigger": _TRIGGERS[run.trigger],
            "requestedBy": run.requested_by,
            "revision": run.revision,
            "specHash": run.spec_hash,
            "slot": to_time(run.slot),
            "createdAt": to_time(run.created_at),
            "cancel": run.cancel_requested,
            "manifest": without_nulls(dict(run.spec)),
        },
    }


def run_status(run: Run, *, jobs: Mapping[str, str] | None = None) -> Obj:
    """The status of a run: its state and every step's."""
    return {
        "state": run.state,
        "reason": run.reason,
        "startTime": to_time(run.started_at),
        "completionTime": to_time(run.finished_at),
        "steps": [
            {
                "name": step.name,
                "depends": list(step.depends),
                "state": step.state,
                "startTime": to_time(step.started_at),
                "completionTime": to_time(step.finished_at),
                "exitCode": step.exit_code,
                "reason": step.reason,
                "job": (jobs or {}).get(step.name, ""),
            }
            for step in run.steps
        ],
    }


def run_from_object(obj: Mapping[str, Any]) -> Run:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    manifest = manifest_of(obj)
    trigger: Trigger = "manual" if spec.get("trigger") == "manual" else "schedule"
    base = new_run(
        workspace=str(metadata.get("namespace")),
        run_id=RunId(str(metadata.get("name"))),
        name=str(spec.get("workflow")),
        trigger=trigger,
        requested_by=str(spec.get("requestedBy") or ""),
        revision=Revision(str(spec.get("revision") or "")),
        spec=manifest,
        spec_hash=str(spec.get("specHash") or ""),
        now=required_time(
            spec.get("createdAt") or metadata.get("creationTimestamp"), "spec.createdAt"
        ),
        slot=from_time(spec.get("slot")),
    )
    steps = base.steps
    stored = {str(s.get("name")): s for s in status.get("steps") or ()}
    if stored:
        steps = tuple(
            StepRun(
                name=step.name,
                depends=step.depends,
                state=stored[step.name].get("state") or "pending",
                started_at=from_time(stored[step.name].get("startTime")),
                finished_at=from_time(stored[step.name].get("completionTime")),
                exit_code=stored[step.name].get("exitCode"),
                reason=str(stored[step.name].get("reason") or ""),
            )
            if step.name in stored
            else step
            for step in steps
        )
    cancel = bool(spec.get("cancel"))
    # Before its first status write, a run is what it was created as (label, annotation).
    state: RunState = status.get("state") or (metadata.get("labels") or {}).get(STATE) or "pending"
    reason = str(status.get("reason") or (metadata.get("annotations") or {}).get(REASON) or "")
    if cancel and state in ("pending", "running") and spec.get("cancelReason"):
        reason = str(spec["cancelReason"])  # as the local store: the request's reason wins
    return Run(
        workspace=base.workspace,
        run_id=base.run_id,
        name=base.name,
        trigger=base.trigger,
        requested_by=base.requested_by,
        revision=base.revision,
        spec=base.spec,
        spec_hash=base.spec_hash,
        created_at=base.created_at,
        slot=base.slot,
        state=state,
        reason=reason,
        started_at=from_time(status.get("startTime")),
        finished_at=from_time(status.get("completionTime")),
        cancel_requested=cancel,
        steps=steps,
    )


def run_created_at(obj: Mapping[str, Any]) -> datetime:
    spec = obj.get("spec") or {}
    metadata = obj.get("metadata") or {}
    return required_time(
        spec.get("createdAt") or metadata.get("creationTimestamp"), "spec.createdAt"
    )


def run_finished_at(obj: Mapping[str, Any]) -> datetime | None:
    return from_time((obj.get("status") or {}).get("completionTime"))


def run_state(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    return str(status.get("state") or ((obj.get("metadata") or {}).get("labels") or {}).get(STATE))
