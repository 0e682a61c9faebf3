"""Cron slots: the instants a schedule fires at, and which of them to run now.

A *slot* is the nominal instant a cron expression fires at. The scheduler
gives every slot a deterministic run id (``slot_run_id``) and keeps a ledger
of the newest slot it has decided, so ``decide`` can be called again after a
restart, by a second replica or after a failed write, and no slot is ever run
twice or silently forgotten. Everything here is pure: time is a parameter.

Time zones and daylight saving time
-----------------------------------

Cron fields are matched against the local wall-clock time in the schedule's
``timezone`` (IANA names, through ``zoneinfo``). Twice a year many zones
repeat or skip an hour; what a schedule does then depends on its kind:

- **Fixed-time jobs** name their hours (``30 2 * * *``, ``0 9,17 * * 1-5``,
  ``0 9-17 * * *``, ``@daily``). They run **once** per matching wall time:

  - on a repeated hour (autumn, "fall back") at the **first** occurrence:
    ``30 1 * * *`` in America/New_York on 2026-11-01 runs at 01:30 EDT
    (05:30 UTC), not again at 01:30 EST;
  - on a skipped hour (spring, "spring forward") at the **shifted** time, the
    missing wall time read with the offset in force before the gap:
    ``30 2 * * *`` in America/New_York on 2026-03-08 runs at 03:30 EDT
    (07:30 UTC).

  Never twice, never zero times.

- **Interval jobs** have ``*`` or a step (``*/N``, ``1-23/2``) in the hour
  field, or every hour (``0-23``): ``*/15 * * * *``, ``0 */2 * * *``,
  ``5 * * * *``. They follow absolute time: every wall time that exists fires,
  so during a repeated hour they fire in **both** occurrences (``*/30 * * * *``
  fires at 01:00 EDT, 01:30 EDT, 01:00 EST and 01:30 EST on 2026-11-01), and
  wall times that do not exist (the skipped hour) do **not** fire.

Catch-up after downtime
-----------------------

A slot that comes due while the scheduler is running is run (it is "on time"
when it is at most ``on_time`` old). Slots that came due while it was not
running are *missed*; the catch-up policy says what happens to them:
``none`` records them all as missed, ``latest`` runs the newest of them if it
is within ``starting_deadline``, ``all`` runs the newest ``max_runs`` of those
within ``starting_deadline``. Missed slots are recorded one by one up to
``max_recorded_misses`` (the newest ones) and only counted beyond that, so a
year of downtime costs the same as an hour. When the schedule itself changes
(crons or time zone), nothing is caught up: the next slot is computed from now.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from reconciler.core.crons import check_cron, expand_cron

CatchUp = Literal["none", "latest", "all"]

_DAY = timedelta(days=1)
_RESOLUTION = timedelta(microseconds=1)  # the smallest step between two datetimes
# Days a wall-clock day's instants can spill over: a UTC offset is below 24 hours,
# so the instants of the local day D lie within (D 00:00 - 1 day, D 00:00 + 2 days).
_SPILL_DAYS = 2
_FIRST_DAY = date(2, 1, 1)  # keeps day arithmetic (and croniter) away from datetime's edges
_LAST_DAY = date(9998, 12, 31)
_HORIZON = timedelta(days=366 * 200)  # how far next_fire_times looks for a rare schedule


def is_fixed_time(expression: str) -> bool:
    """True when the hour field names fixed hours ('30 2 * * *', '0 9,17 * * 1-5', '@daily').

    False for interval jobs: '*' or a step in the hour field, or every hour
    ('*/15 * * * *', '0 */2 * * *', '5 * * * *', '0 0-23 * * *').
    """
    return _compile(_normalize_one(expression)).fixed


def fire_times(
    crons: Sequence[str],
    timezone: str,
    *,
    after: datetime,
    until: datetime,
    limit: int = 10_000,
) -> list[datetime]:
    """The slots with ``after < t <= until`` (aware, UTC), sorted and deduplicated.

    At most ``limit`` of them: the oldest ones.
    """
    _require_aware(after, "after")
    _require_aware(until, "until")
    exprs = _normalize(crons)
    zone_key = _zone(timezone).key
    if limit <= 0 or until <= after or not exprs:
        return []
    return _oldest(
        exprs, zone_key, after=after.astimezone(UTC), until=until.astimezone(UTC), limit=limit
    )


def next_fire_times(
    crons: Sequence[str], timezone: str, *, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` slots after ``after`` (aware, UTC); fewer if the schedule ends."""
    _require_aware(after, "after")
    start = after.astimezone(UTC)
    end = datetime(_LAST_DAY.year, _LAST_DAY.month, _LAST_DAY.day, tzinfo=UTC) - 3 * _DAY
    if start >= end:
        return []
    until = start + _HORIZON if end - start > _HORIZON else end
    return fire_times(crons, timezone, after=start, until=until, limit=count)


def slot_run_id(name: str, slot: datetime) -> str:
    """The run id of a scheduled slot: ``<name>-<YYYYMMDD>t<HHMM>z`` in UTC, lower case.

    63 characters at most (a DNS-1123 label) for names of up to 48 characters.
    """
    return f"{name}-{_slot_suffix(slot)}".lower()


@functools.lru_cache(maxsize=1024)  # the runs of one slot share it (no strftime per run)
def _slot_suffix(slot: datetime) -> str:
    _require_aware(slot, "slot")
    return f"{slot.astimezone(UTC):%Y%m%dt%H%Mz}"


def manual_run_id(name: str, token: str) -> str:
    """The run id of an on-demand run: ``<name>-m<12 hex chars of sha256(token)>``.

    The same token always gives the same id, so a retried request creates one run.
    """
    return f"{name}-m{hashlib.sha256(token.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class CatchUpPolicy:
    """What to do with slots that came due while the scheduler was not running."""

    mode: CatchUp = "latest"
    starting_deadline: timedelta = timedelta(hours=1)  # 'latest'/'all' never start older slots
    max_runs: int = 10  # 'all': at most this many catch-up runs, the newest
    on_time: timedelta = timedelta(seconds=60)  # a slot this close to now runs, whatever the mode
    max_recorded_misses: int = 1000  # misses recorded one by one; beyond, only counted

    def __post_init__(self) -> None:
        if self.mode not in get_args(CatchUp):
            raise ValueError(f"catch-up mode {self.mode!r} is not one of none, latest, all")
        for field in ("starting_deadline", "on_time"):
            if getattr(self, field) < timedelta(0):
                raise ValueError(f"{field} must not be negative")
        for field in ("max_runs", "max_recorded_misses"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")


@dataclass(frozen=True)
class Ledger:
    """How far a workflow's schedule has been decided."""

    last_slot: datetime  # every slot <= this has been decided (run or recorded missed); UTC
    schedule_hash: str  # schedule_hash(crons, timezone) the ledger was computed for


@dataclass(frozen=True)
class ScheduleDecision:
    """What to do now for one workflow's schedule; store ``ledger`` after doing it."""

    run: tuple[datetime, ...]  # slots to create runs for now, oldest first
    missed: tuple[datetime, ...]  # slots to record as skipped ("missed"), oldest first
    missed_uncounted: int  # further missed slots, older than those in ``missed``
    ledger: Ledger


def schedule_hash(crons: Sequence[str], timezone: str) -> str:
    """A short digest of the schedule: equal for the same set of crons in the same zone.

    Macros and whitespace are normalised and the order of the crons does not count.
    """
    exprs = sorted({expand_cron(c) for c in crons})
    text = json.dumps({"crons": exprs, "timezone": timezone}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decide(
    crons: Sequence[str],
    timezone: str,
    *,
    ledger: Ledger | None,
    now: datetime,
    start: datetime,
    policy: CatchUpPolicy = CatchUpPolicy(),
) -> ScheduleDecision:
    """Which due slots to run and which to record as missed, and the ledger to store after.

    ``ledger`` is None for a new workflow: nothing is due before ``start`` (its
    creation time). A ledger for another schedule means the schedule changed:
    nothing is caught up and the ledger restarts at ``now``. The work is bounded
    by the policy, not by how long the scheduler was away.
    """
    _require_aware(now, "now")
    _require_aware(start, "start")
    now = now.astimezone(UTC)
    digest = schedule_hash(crons, timezone)
    if ledger is not None and ledger.schedule_hash != digest:
        return ScheduleDecision((), (), 0, Ledger(now, digest))
    exprs = _normalize(crons)
    zone_key = _zone(timezone).key
    low = (start if ledger is None else ledger.last_slot).astimezone(UTC)
    unchanged = ScheduleDecision((), (), 0, Ledger(low, digest))
    if now <= low or not exprs:
        return unchanged

    # On time: now - slot <= on_time. Older ("missed"): now - slot > on_time.
    older_until = now - policy.on_time - _RESOLUTION
    on_time = _oldest(exprs, zone_key, after=max(low, older_until), until=now, limit=None)
    older: list[datetime] = []
    older_total = 0
    if older_until > low:
        older_total = _count(exprs, zone_key, after=low, until=older_until)
        cap = {"none": 0, "latest": 1, "all": policy.max_runs}[policy.mode]
        # At least one: the newest older slot moves the ledger even when nothing is listed.
        wanted = min(older_total, max(1, cap + policy.max_recorded_misses))
        older = _newest(exprs, zone_key, after=low, until=older_until, count=wanted)
        eligible = [s for s in older if now - s <= policy.starting_deadline]
        catch_up = eligible[len(eligible) - min(cap, len(eligible)) :]
    else:
        catch_up = []
    missable = older[: len(older) - len(catch_up)]
    missed = missable[len(missable) - min(policy.max_recorded_misses, len(missable)) :]
    newest = on_time[-1] if on_time else (older[-1] if older else None)
    if newest is None:
        return unchanged
    return ScheduleDecision(
        run=(*catch_up, *on_time),
        missed=tuple(missed),
        missed_uncounted=older_total - len(catch_up) - len(missed),
        ledger=Ledger(newest, digest),
    )


# --- cron expressions -------------------------------------------------------------------


@dataclass(frozen=True)
class _Cron:
    minutes: tuple[int, ...]  # minutes of the day it fires at (hour * 60 + minute), sorted
    day_fields: str  # "day-of-month month day-of-week"
    fixed: bool

    @property
    def every_day(self) -> bool:
        return self.day_fields == "* * *"


def _normalize_one(expression: str) -> str:
    problem = check_cron(expression)
    if problem is not None:
        raise ValueError(f"cron {expression!r}: {problem}")
    return expand_cron(expression)


def _normalize(crons: Sequence[str]) -> tuple[str, ...]:
    if isinstance(crons, str):
        raise TypeError("crons must be a sequence of expressions, not one string")
    return tuple(dict.fromkeys(_normalize_one(c) for c in crons))


def _field_values(values: list[object], size: int, expression: str) -> list[int]:
    if values == ["*"]:
        return list(range(size))
    if not all(isinstance(v, int) for v in values):
        raise ValueError(f"cron {expression!r}: unsupported minute or hour field")
    return [v for v in values if isinstance(v, int)]


@functools.lru_cache(maxsize=1024)
def _compile(expression: str) -> _Cron:
    fields = expression.split(" ")
    expanded = croniter(expression).expanded
    minutes = _field_values(expanded[0], 60, expression)
    hours = _field_values(expanded[1], 24, expression)
    fixed = "*" not in fields[1] and "/" not in fields[1] and len(set(hours)) < 24
    return _Cron(
        minutes=tuple(sorted({h * 60 + m for h in hours for m in minutes})),
        day_fields=" ".join(fields[2:]),
        fixed=fixed,
    )


# --- matching days --------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _year_days(day_fields: str, year: int) -> tuple[tuple[int, ...], int | None]:
    """Ordinals of the dates of ``year`` that match, and the first match after it (or None)."""
    iterator = croniter(f"0 0 {day_fields}", datetime(year - 1, 12, 31, 23, 59))
    found: list[int] = []
    while True:
        try:
            moment = iterator.get_next(datetime)
        except (CroniterBadDateError, ValueError, OverflowError):
            return tuple(found), None
        if moment.year != year:
            return tuple(found), moment.toordinal()
        found.append(moment.toordinal())


def _matches(cron: _Cron, day: date) -> bool:
    if cron.every_day:
        return True
    ordinals = _year_days(cron.day_fields, day.year)[0]
    index = bisect.bisect_left(ordinals, day.toordinal())
    return index < len(ordinals) and ordinals[index] == day.toordinal()


def _next_match(cron: _Cron, day: date) -> date | None:
    """The first matching date on or after ``day``."""
    if cron.every_day:
        return day
    ordinals, later = _year_days(cron.day_fields, day.year)
    index = bisect.bisect_left(ordinals, day.toordinal())
    if index < len(ordinals):
        return date.fromordinal(ordinals[index])
    return None if later is None else date.fromordinal(later)


def _previous_match(cron: _Cron, day: date, floor: date) -> date | None:
    """The last matching date on or before ``day`` and not before ``floor``."""
    if cron.every_day:
        return day if day >= floor else None
    target = day.toordinal()
    for year in range(day.year, floor.year - 1, -1):
        ordinals = _year_days(cron.day_fields, year)[0]
        index = bisect.bisect_right(ordinals, target)
        if index:
            found = date.fromordinal(ordinals[index - 1])
            return found if found >= floor else None
        target = date(year, 1, 1).toordinal() - 1
    return None


def _days_up(crons: Sequence[_Cron], first: date, last: date) -> Iterator[date]:
    """Dates in [first, last] that match at least one cron, ascending."""
    day = first
    while day <= last:
        candidates = [m for c in crons if (m := _next_match(c, day)) is not None]
        if not candidates or min(candidates) > last:
            return
        day = min(candidates)
        yield day
        day += _DAY


def _days_down(crons: Sequence[_Cron], first: date, last: date) -> Iterator[date]:
    """Dates in [first, last] that match at least one cron, descending."""
    day = last
    while day >= first:
        candidates = [m for c in crons if (m := _previous_match(c, day, first)) is not None]
        if not candidates:
            return
        day = max(candidates)
        yield day
        day -= _DAY


def _day_range(after: datetime, until: datetime) -> tuple[date, date]:
    """The local dates whose slots can fall in (after, until] (both UTC)."""
    first = max(after.date(), _FIRST_DAY + _SPILL_DAYS * _DAY) - _DAY
    last = min(until.date(), _LAST_DAY - _SPILL_DAYS * _DAY) + _DAY
    return first, last


# --- wall times to instants -----------------------------------------------------------


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Berlin'"
        ) from error


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _offset(zone: ZoneInfo, wall: datetime) -> timedelta:
    """The UTC offset of a naive wall time (its ``fold`` picks the reading)."""
    offset = zone.utcoffset(wall)
    assert offset is not None  # zoneinfo always knows the offset
    return offset


# Building datetimes and timedeltas with keyword arguments is slow; a day has 1440 minutes.
_MINUTES = tuple(timedelta(minutes=m) for m in range(24 * 60))
_HOURS = tuple(timedelta(hours=h) for h in range(25))


def _instants(
    zone: ZoneInfo, wall: datetime, wall_as_utc: datetime, *, fixed: bool
) -> tuple[datetime, ...]:
    """The instants a naive local wall time fires at, by the DST policy above.

    ``wall_as_utc`` is the same wall time labelled UTC, to subtract the offset from.
    """
    before = _offset(zone, wall)  # fold=0: the reading with the offset before a transition
    after = _offset(zone, wall.replace(fold=1))
    first = wall_as_utc - before
    if before == after:
        return (first,)
    if before < after:  # the clock jumped forward over this wall time: it does not exist
        return (first,) if fixed else ()
    # The clock went back: this wall time happens twice.
    return (first,) if fixed else (first, wall_as_utc - after)


@functools.lru_cache(maxsize=256)
def _day_instants(exprs: tuple[str, ...], zone_key: str, ordinal: int) -> tuple[datetime, ...]:
    """Every slot of the local date ``ordinal`` (UTC instants, sorted, distinct)."""
    zone = ZoneInfo(zone_key)
    day = date.fromordinal(ordinal)
    midnight = datetime(day.year, day.month, day.day)
    midnight_as_utc = datetime(day.year, day.month, day.day, tzinfo=UTC)
    crons = [cron for cron in map(_compile, exprs) if _matches(cron, day)]
    if _plain_day(zone_key, ordinal):  # one offset all day: no DST policy to apply
        start = midnight_as_utc - _offset(zone, midnight)
        minutes = sorted(set[int]().union(*(cron.minutes for cron in crons)))
        return tuple(start + _MINUTES[m] for m in minutes)
    found: set[datetime] = set()
    for cron in crons:
        for minute in cron.minutes:
            wall, wall_as_utc = midnight + _MINUTES[minute], midnight_as_utc + _MINUTES[minute]
            found.update(_instants(zone, wall, wall_as_utc, fixed=cron.fixed))
    return tuple(sorted(found))


@functools.lru_cache(maxsize=8192)
def _plain_day(zone_key: str, ordinal: int) -> bool:
    """True when the zone keeps one UTC offset all through the local date (no transition).

    Sampled hourly from 00:00 to 24:00: a transition in the day changes the
    offset between samples, one at midnight reads the offset before it. (Two
    transitions that cancel out within one hour would go unseen; tzdata has none.)
    """
    zone = ZoneInfo(zone_key)
    midnight = datetime.fromordinal(ordinal)
    expected = _offset(zone, midnight)
    return all(_offset(zone, midnight + step) == expected for step in _HOURS)


# --- enumerating and counting ---------------------------------------------------------


def _oldest(
    exprs: tuple[str, ...], zone_key: str, *, after: datetime, until: datetime, limit: int | None
) -> list[datetime]:
    """The oldest ``limit`` (or all) slots in (after, until], sorted."""
    crons = [_compile(e) for e in exprs]
    first, last = _day_range(after, until)
    found: list[datetime] = []
    stop: date | None = None
    for day in _days_up(crons, first, last):
        if stop is not None and day > stop:
            break
        instants = _day_instants(exprs, zone_key, day.toordinal())
        low = bisect.bisect_right(instants, after)
        high = bisect.bisect_right(instants, until)
        if limit is not None:
            high = min(high, low + limit)
        found.extend(instants[low:high])
        # Later dates' slots cannot come before this date's once _SPILL_DAYS are past.
        if stop is None and limit is not None and len(set(found)) >= limit:
            stop = day + _SPILL_DAYS * _DAY
    return sorted(set(found))[:limit]


def _newest(
    exprs: tuple[str, ...], zone_key: str, *, after: datetime, until: datetime, count: int
) -> list[datetime]:
    """The newest ``count`` slots in (after, until], sorted oldest first."""
    if count <= 0:
        return []
    crons = [_compile(e) for e in exprs]
    first, last = _day_range(after, until)
    found: set[datetime] = set()
    stop: date | None = None
    for day in _days_down(crons, first, last):
        if stop is not None and day < stop:
            break
        instants = _day_instants(exprs, zone_key, day.toordinal())
        low = bisect.bisect_right(instants, after)
        high = bisect.bisect_right(instants, until)
        found.update(instants[max(low, high - count) : high])
        if stop is None and len(found) >= count:
            stop = day - _SPILL_DAYS * _DAY
    return sorted(found)[len(found) - min(count, len(found)) :]


def _count(exprs: tuple[str, ...], zone_key: str, *, after: datetime, until: datetime) -> int:
    """How many slots fall in (after, until], without listing most of them.

    A "bulk" date lies at least _SPILL_DAYS whole days inside the range, so all
    its slots are in it, and the zone has no transition within _SPILL_DAYS of it,
    so its slots are its wall times at one offset, distinct from every other
    date's: it counts as the number of distinct minutes its crons fire at. Other
    dates (the ends of the range, days around a DST change) are listed exactly.
    """
    crons = [_compile(e) for e in exprs]
    first, last = _day_range(after, until)
    inner_first = after.date() + _SPILL_DAYS * _DAY
    inner_last = until.date() - _SPILL_DAYS * _DAY
    spill = range(-_SPILL_DAYS, _SPILL_DAYS + 1)
    sizes: dict[tuple[int, ...], int] = {}
    exact: set[datetime] = set()
    total = 0
    for day in _days_up(crons, first, last):
        ordinal = day.toordinal()
        if inner_first <= day <= inner_last and all(
            _plain_day(zone_key, ordinal + k) for k in spill
        ):
            key = tuple(i for i, cron in enumerate(crons) if _matches(cron, day))
            if key not in sizes:
                sizes[key] = len(set[int]().union(*(crons[i].minutes for i in key)))
            total += sizes[key]
        else:
            instants = _day_instants(exprs, zone_key, ordinal)
            low = bisect.bisect_right(instants, after)
            high = bisect.bisect_right(instants, until)
            exact.update(instants[low:high])
    return total + len(exact)
