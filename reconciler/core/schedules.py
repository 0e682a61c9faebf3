"""Schedules: when a Workflow's crons fire, and what the scheduler keeps of a workflow.

``plan`` shows the coming run times; they come from ``slots.next_fire_times``,
the same cron and DST arithmetic the scheduler runs on, so a plan never
promises another time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.slots import next_fire_times

_T = TypeVar("_T")
DagShape = tuple[tuple[str, tuple[str, ...]], ...]  # (step, the steps it depends on), in order


def next_run_times(
    crons: Sequence[str], timezone: str, *, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` distinct fire times after ``after`` (aware datetimes in the zone)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(timezone)
    return [t.astimezone(zone) for t in next_fire_times(crons, timezone, after=after, count=count)]


@dataclass(frozen=True, slots=True)
class ScheduledWorkflow:
    """A workflow with a schedule as the scheduler keeps it: its schedule, not its spec.

    10,000 decoded specs weigh over 100 MB. A run copies its spec from the
    backend when it is created, checked against ``spec_hash``: the spec the
    schedule, policy and DAG here were read from.
    """

    key: WorkflowKey
    workspace: str
    name: str
    revision: Revision
    spec_hash: str
    created_at: datetime
    crons: tuple[str, ...]
    timezone: str
    policy: str  # concurrencyPolicy: Allow, Forbid or Replace
    dag: DagShape


def scheduled_workflow(
    *,
    key: WorkflowKey,
    workspace: str,
    name: str,
    revision: Revision,
    spec_hash: str,
    created_at: datetime,
    spec: Mapping[str, Any],
    shared: dict[Any, Any] | None = None,
) -> ScheduledWorkflow | None:
    """What the scheduler keeps of a workflow with this normalized spec; None without a schedule.

    ``shared``: values met before (equal schedules, DAG shapes, revisions),
    so that a backend listing thousands keeps each once.
    """
    schedule = spec["spec"].get("schedule")
    if not schedule:
        return None
    once = shared if shared is not None else {}
    dag = tuple(
        (str(step["name"]), tuple(str(d) for d in step.get("depends") or ()))
        for step in spec["spec"]["dag"]
    )
    return ScheduledWorkflow(
        key=key,
        workspace=_once(once, workspace),
        name=name,
        revision=_once(once, revision),
        spec_hash=spec_hash,
        created_at=created_at,
        crons=_once(once, tuple(str(c) for c in schedule["crons"])),
        timezone=_once(once, str(schedule["timezone"])),
        policy=_once(once, str(schedule.get("concurrencyPolicy") or "Allow")),
        dag=_once(once, dag),
    )


def _once(shared: dict[Any, Any], value: _T) -> _T:
    """``value``, or an equal one met before: equal values share one object."""
    found: _T = shared.setdefault(value, value)
    return found
