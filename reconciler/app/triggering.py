"""Starting a run on demand: the one place ``reconciler run`` and the HTTP API share.

``concurrencyPolicy`` applies as for scheduled runs: ``Forbid`` refuses while
a run is active, ``Replace`` asks the active runs to cancel. The run id is
``<name>-m<hash>``; the event names who asked.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from reconciler.core.names import RunId
from reconciler.core.runs import Run, new_run
from reconciler.core.slots import manual_run_id
from reconciler.core.workflows import AppliedWorkflow
from reconciler.ports import RunBackend


class TriggerRefused(Exception):  # noqa: N818 - a refusal, said to people
    """concurrencyPolicy Forbid and a run still active."""

    def __init__(self, message: str, active: Run) -> None:
        super().__init__(message)
        self.active = active


def trigger_run(
    store: RunBackend, workflow: AppliedWorkflow, *, requested_by: str, now: datetime, via: str = ""
) -> Run:
    """Create a manual run of workflow (TriggerRefused under Forbid with one active)."""
    policy = (workflow.spec["spec"].get("schedule") or {}).get("concurrencyPolicy", "Allow")
    active = store.runs_of(workflow.key, states=["pending", "running"])
    if active and policy == "Forbid":
        raise TriggerRefused(
            f"run {active[0].run_id} is still {active[0].state} and concurrencyPolicy is Forbid",
            active[0],
        )
    run = new_run(
        workspace=workflow.workspace,
        run_id=RunId(manual_run_id(workflow.name, uuid.uuid4().hex)),
        name=workflow.name,
        trigger="manual",
        requested_by=requested_by,
        revision=workflow.revision,
        spec=workflow.spec,
        spec_hash=workflow.spec_hash,
        now=now,
    )
    where = f" via {via}" if via else ""
    events = [
        (workflow.key, run.run_id, "RunTriggered", f"manual run requested by {requested_by}{where}")
    ]
    if active and policy == "Replace":
        for old in active:
            store.request_cancel(old.workspace, old.run_id, reason=f"replaced by run {run.run_id}")
    store.create_runs([run], events=events)
    return run
