"""When a schedule fires: the coming run times of a Workflow's crons in its time zone."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.core.crons import expand_cron


def _times(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    iterator = croniter(expand_cron(expression), after.astimezone(zone))
    while True:
        yield iterator.get_next(datetime)


def next_run_times(
    crons: Sequence[str], timezone: str, *, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` distinct fire times after ``after`` (aware datetimes in the zone)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(timezone)
    merged = heapq.merge(*(_times(c, zone, after) for c in crons))
    result: list[datetime] = []
    for moment in merged:
        if result and moment == result[-1]:
            continue
        result.append(moment)
        if len(result) == count:
            break
    return result
