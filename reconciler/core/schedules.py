"""When a schedule fires: the coming run times of a Workflow's crons in its time zone.

``plan`` shows these; they come from ``slots.next_fire_times``, the same cron
and DST arithmetic the scheduler runs on, so a plan never promises another time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from reconciler.core.slots import next_fire_times


def next_run_times(
    crons: Sequence[str], timezone: str, *, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` distinct fire times after ``after`` (aware datetimes in the zone)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(timezone)
    return [t.astimezone(zone) for t in next_fire_times(crons, timezone, after=after, count=count)]
