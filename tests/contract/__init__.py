"""The backend contract suite: what every ``Backend``/``RunBackend`` must do, on every backend.

The tests call port methods only. Values are built here, from small but
complete manifests, so that what a backend stores is what the reconciler
really stores (a normalized spec full of nulls and empty lists, hashes of
it, runs made by ``core.runs``).

Time: values the tests build carry microseconds and must come back equal
(aware, UTC). Timestamps a backend assigns itself (``created_at``,
``updated_at`` of workflows) come from the backend's own clock; the tests
only compare them with each other.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.core.manifests import Workflow
from reconciler.core.names import Revision, RunId, WorkflowKey, workflow_key
from reconciler.core.runs import Run, RunState, Trigger, new_run
from reconciler.core.slots import manual_run_id, slot_run_id
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply

OWNER = "reconciler-a"
OTHER_OWNER = "reconciler-b"
SOURCE = "https://git.example/org/workflows.git"
WORKSPACE = "public"
T0 = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 plus seconds (microseconds kept)."""
    return T0 + timedelta(seconds=seconds)


def key(name: str, workspace: str = WORKSPACE) -> WorkflowKey:
    return workflow_key(workspace, name)


def manifest(
    name: str,
    *,
    cron: str | None = "*/5 * * * *",
    image: str = "alpine:3.20",
    description: str | None = "Nächtlicher Lauf ✓",
) -> dict[str, Any]:
    """A Workflow manifest: a container step, then two no-op steps depending on it."""
    spec: dict[str, Any] = {
        "dag": [
            {
                "name": "fetch",
                "spec": {
                    "stack": "container",
                    "stackSpec": {"image": image, "command": ["sh", "-c", "echo ok"]},
                },
            },
            {"name": "build", "depends": ["fetch"]},
            {"name": "publish", "depends": ["build"]},
        ]
    }
    if cron is not None:
        spec["schedule"] = {"crons": [cron], "timezone": "Europe/Berlin"}
    data: dict[str, Any] = {"version": "v2alpha", "name": name, "type": "workflow", "spec": spec}
    if description is not None:
        data["description"] = description
    return data


def desired(
    name: str,
    *,
    workspace: str = WORKSPACE,
    path: str | None = None,
    image: str = "alpine:3.20",
    cron: str | None = "*/5 * * * *",
) -> DesiredWorkflow:
    workflow = Workflow.model_validate(manifest(name, image=image, cron=cron))
    return DesiredWorkflow.from_manifest(
        workflow, workspace=workspace, path=path or f"workflows/{name}.yaml"
    )


def request(
    name: str,
    *,
    workspace: str = WORKSPACE,
    owner: str = OWNER,
    revision: str = "1" * 40,
    source: str = SOURCE,
    path: str | None = None,
    image: str = "alpine:3.20",
) -> WorkflowApply:
    """A create-or-update request for a workflow named ``name``."""
    return WorkflowApply(
        desired=desired(name, workspace=workspace, path=path, image=image),
        source=source,
        revision=Revision(revision),
        owner=owner,
    )


def make_run(
    workflow: DesiredWorkflow,
    *,
    created_at: datetime = T0,
    run_id: str | None = None,
    trigger: Trigger = "manual",
    slot: datetime | None = None,
    revision: str = "1" * 40,
) -> Run:
    """A pending run of ``workflow``: a slot run when ``slot`` is given, else a manual one."""
    if run_id is None:
        run_id = (
            slot_run_id(workflow.name, slot)
            if slot is not None
            else manual_run_id(workflow.name, created_at.isoformat())
        )
    return new_run(
        workspace=workflow.workspace,
        run_id=RunId(run_id),
        name=workflow.name,
        trigger="schedule" if slot is not None else trigger,
        requested_by="scheduler" if slot is not None else "alice@example.org",
        revision=Revision(revision),
        spec=workflow.spec,
        spec_hash=workflow.spec_hash,
        now=created_at,
        slot=slot,
    )


def finished(run: Run, *, state: RunState = "succeeded", at_: datetime | None = None) -> Run:
    """The run ended in ``state`` (steps all succeeded, or failed/skipped to match) at ``at_``."""
    end = at_ or run.created_at + timedelta(minutes=1)
    start = run.created_at + timedelta(seconds=1)
    if state == "succeeded":
        steps = tuple(
            replace(s, state="succeeded", started_at=start, finished_at=end, exit_code=0)
            for s in run.steps
        )
    elif state == "failed":
        first, *rest = run.steps
        steps = (
            replace(
                first,
                state="failed",
                started_at=start,
                finished_at=end,
                exit_code=1,
                reason="exited with code 1",
            ),
            *(replace(s, state="skipped", reason="the run failed") for s in rest),
        )
    elif state in ("cancelled", "skipped"):
        steps = tuple(replace(s, state=state, reason=state) for s in run.steps)
    else:
        raise ValueError(f"not a final state: {state}")
    return replace(
        run,
        state=state,
        started_at=None if state == "skipped" else start,
        finished_at=end,
        reason="" if state == "succeeded" else state,
        steps=steps,
    )
