"""Cron slots: real DST transitions, merged crons, catch-up decisions, restart safety."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.names import check_label
from reconciler.core.slots import (
    CatchUp,
    CatchUpPolicy,
    Ledger,
    decide,
    fire_times,
    is_fixed_time,
    manual_run_id,
    next_fire_times,
    schedule_hash,
    slot_run_id,
)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def utc(text: str) -> datetime:
    """'2026-03-08 07:30' as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def every(first: str, last: str, step: timedelta) -> list[datetime]:
    """UTC instants from first to last inclusive, ``step`` apart."""
    moment, end, found = utc(first), utc(last), []
    while moment <= end:
        found.append(moment)
        moment += step
    return found


def local_day(timezone: str, day: date) -> tuple[datetime, datetime]:
    """(after, until) bounds that hold exactly the slots of one local calendar day."""
    zone = ZoneInfo(timezone)
    midnight = datetime.combine(day, time(), tzinfo=zone)
    next_midnight = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    second = timedelta(seconds=1)
    return midnight - second, next_midnight - second


NY, BERLIN = "America/New_York", "Europe/Berlin"
NY_SPRING, NY_FALL = date(2026, 3, 8), date(2026, 11, 1)
BERLIN_SPRING, BERLIN_FALL = date(2026, 3, 29), date(2026, 10, 25)


# --- DST transitions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "day", "cron", "expected"),
    [
        # New York, 2026-03-08: 02:00 EST -> 03:00 EDT; the local day is 05:00Z..04:00Z (23 h).
        pytest.param(
            NY, NY_SPRING, "30 2 * * *", [utc("2026-03-08 07:30")], id="ny-spring-fixed-gap"
        ),
        pytest.param(
            NY,
            NY_SPRING,
            "*/15 2 * * *",
            every("2026-03-08 07:00", "2026-03-08 07:45", 15 * MINUTE),
            id="ny-spring-fixed-gap-minute-steps",
        ),
        pytest.param(
            NY, NY_SPRING, "0 12 * * *", [utc("2026-03-08 16:00")], id="ny-spring-fixed-noon"
        ),
        pytest.param(
            NY,
            NY_SPRING,
            "*/30 * * * *",
            every("2026-03-08 05:00", "2026-03-09 03:30", 30 * MINUTE),
            id="ny-spring-every-30-min",
        ),
        pytest.param(
            NY,
            NY_SPRING,
            "0 * * * *",
            every("2026-03-08 05:00", "2026-03-09 03:00", HOUR),
            id="ny-spring-hourly",
        ),
        # New York, 2026-11-01: 02:00 EDT -> 01:00 EST; the local day is 04:00Z..05:00Z (25 h).
        pytest.param(
            NY, NY_FALL, "30 1 * * *", [utc("2026-11-01 05:30")], id="ny-fall-fixed-overlap"
        ),
        pytest.param(
            NY, NY_FALL, "30 2 * * *", [utc("2026-11-01 07:30")], id="ny-fall-fixed-after"
        ),
        pytest.param(
            NY,
            NY_FALL,
            "0 1-3 * * *",
            [utc("2026-11-01 05:00"), utc("2026-11-01 07:00"), utc("2026-11-01 08:00")],
            id="ny-fall-fixed-hour-range",
        ),
        pytest.param(NY, NY_FALL, "0 12 * * *", [utc("2026-11-01 17:00")], id="ny-fall-fixed-noon"),
        pytest.param(
            NY,
            NY_FALL,
            "*/30 * * * *",
            every("2026-11-01 04:00", "2026-11-02 04:30", 30 * MINUTE),
            id="ny-fall-every-30-min",
        ),
        pytest.param(
            NY,
            NY_FALL,
            "0 * * * *",
            every("2026-11-01 04:00", "2026-11-02 04:00", HOUR),
            id="ny-fall-hourly",
        ),
        # Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST; the local day is 23:00Z..22:00Z (23 h).
        pytest.param(
            BERLIN,
            BERLIN_SPRING,
            "30 2 * * *",
            [utc("2026-03-29 01:30")],
            id="berlin-spring-fixed-gap",
        ),
        pytest.param(
            BERLIN, BERLIN_SPRING, "0 12 * * *", [utc("2026-03-29 10:00")], id="berlin-spring-noon"
        ),
        pytest.param(
            BERLIN,
            BERLIN_SPRING,
            "*/30 * * * *",
            every("2026-03-28 23:00", "2026-03-29 21:30", 30 * MINUTE),
            id="berlin-spring-every-30-min",
        ),
        pytest.param(
            BERLIN,
            BERLIN_SPRING,
            "0 * * * *",
            every("2026-03-28 23:00", "2026-03-29 21:00", HOUR),
            id="berlin-spring-hourly",
        ),
        # Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET; the local day is 22:00Z..23:00Z (25 h).
        pytest.param(
            BERLIN,
            BERLIN_FALL,
            "30 2 * * *",
            [utc("2026-10-25 00:30")],
            id="berlin-fall-fixed-overlap",
        ),
        pytest.param(
            BERLIN, BERLIN_FALL, "0 12 * * *", [utc("2026-10-25 11:00")], id="berlin-fall-noon"
        ),
        pytest.param(
            BERLIN,
            BERLIN_FALL,
            "*/30 * * * *",
            every("2026-10-24 22:00", "2026-10-25 22:30", 30 * MINUTE),
            id="berlin-fall-every-30-min",
        ),
        pytest.param(
            BERLIN,
            BERLIN_FALL,
            "0 * * * *",
            every("2026-10-24 22:00", "2026-10-25 22:00", HOUR),
            id="berlin-fall-hourly",
        ),
    ],
)
def test_dst_transition_day(timezone: str, day: date, cron: str, expected: list[datetime]) -> None:
    after, until = local_day(timezone, day)
    assert fire_times([cron], timezone, after=after, until=until) == expected


@pytest.mark.parametrize(
    ("day", "cron", "local_hours"),
    [
        pytest.param(NY_SPRING, "*/30 * * * *", 23, id="spring-23-hours"),
        pytest.param(NY_FALL, "*/30 * * * *", 25, id="fall-25-hours"),
        pytest.param(NY_FALL, "30 * * * *", 25, id="fall-half-past"),
    ],
)
def test_interval_jobs_fire_in_both_occurrences(day: date, cron: str, local_hours: int) -> None:
    after, until = local_day(NY, day)
    slots = fire_times([cron], NY, after=after, until=until)
    per_hour = 2 if cron.startswith("*/30") else 1
    assert len(slots) == local_hours * per_hour
    walls = [s.astimezone(ZoneInfo(NY)) for s in slots]
    if day == NY_FALL:  # 01:30 twice: once in EDT (fold 0) and once in EST (fold 1)
        assert [
            (w.strftime("%H:%M %Z"), w.fold) for w in walls if w.hour == 1 and w.minute == 30
        ] == [
            ("01:30 EDT", 0),
            ("01:30 EST", 1),
        ]


@pytest.mark.parametrize(
    "timezone",
    [
        pytest.param(NY, id="new-york"),
        pytest.param(BERLIN, id="berlin"),
        pytest.param("Australia/Lord_Howe", id="lord-howe-30-min-dst"),
        pytest.param("America/Santiago", id="santiago-midnight-transitions"),
        pytest.param("Asia/Kolkata", id="kolkata-no-dst"),
    ],
)
@pytest.mark.parametrize("cron", ["30 2 * * *", "30 1 * * *", "@daily", "0 0,12 * * *"])
def test_fixed_time_jobs_run_once_per_day_all_year(timezone: str, cron: str) -> None:
    zone = ZoneInfo(timezone)
    after, _ = local_day(timezone, date(2026, 1, 1))
    _, until = local_day(timezone, date(2026, 12, 31))
    slots = fire_times([cron], timezone, after=after, until=until)
    per_day = 2 if "0,12" in cron else 1
    assert len(slots) == 365 * per_day
    dates = Counter(s.astimezone(zone).date() for s in slots)
    assert set(dates.values()) == {per_day}


@pytest.mark.parametrize(
    "timezone",
    [NY, BERLIN, "Australia/Lord_Howe", "America/Santiago", "Asia/Kathmandu", "UTC"],
)
def test_interval_jobs_follow_absolute_time_all_year(timezone: str) -> None:
    slots = fire_times(
        ["*/30 * * * *"],
        timezone,
        after=utc("2026-01-01 00:00"),
        until=utc("2027-01-01 00:00"),
        limit=10**6,
    )
    assert len(slots) == 365 * 48
    assert {b - a for a, b in itertools.pairwise(slots)} == {30 * MINUTE}


INTERVAL_CRONS = ["*/15 * * * *", "0 */2 * * *", "45 * * * 1-5", "0,15 */3 * * *"]
FIXED_CRONS = ["30 2 * * *", "0,45 1-3 * * *", "15 0 * * 0", "0 2 1 * *"]
TRANSITIONS = [
    (NY, NY_SPRING),
    (NY, NY_FALL),
    (BERLIN, BERLIN_SPRING),
    (BERLIN, BERLIN_FALL),
    ("Australia/Lord_Howe", date(2026, 4, 5)),
    ("Australia/Lord_Howe", date(2026, 10, 4)),
    ("America/Santiago", date(2026, 4, 5)),
    ("America/Santiago", date(2026, 9, 6)),
]


@settings(max_examples=30, deadline=None)
@given(
    transition=st.sampled_from(TRANSITIONS),
    cron=st.sampled_from(INTERVAL_CRONS + FIXED_CRONS),
    start_hours=st.integers(min_value=-30, max_value=20),
    length_hours=st.integers(min_value=0, max_value=40),
)
def test_slots_match_a_brute_force_oracle(
    transition: tuple[str, date], cron: str, start_hours: int, length_hours: int
) -> None:
    """Interval jobs: every UTC quarter hour whose local wall time matches. Fixed-time
    jobs: each matching local wall time read with fold=0 (PEP 495's first reading)."""
    timezone, day = transition
    zone = ZoneInfo(timezone)
    after = datetime.combine(day, time(), tzinfo=UTC) + start_hours * HOUR
    until = after + length_hours * HOUR
    expected: set[datetime] = set()
    if cron in INTERVAL_CRONS:
        moment = after - after.minute % 15 * MINUTE
        while moment <= until:
            wall = moment.astimezone(zone).replace(tzinfo=None)
            if moment > after and croniter.match(cron, wall):
                expected.add(moment)
            moment += 15 * MINUTE
    else:
        local = after.astimezone(zone).date() - timedelta(days=1)
        while local <= until.astimezone(zone).date() + timedelta(days=1):
            for quarter in range(96):
                wall = datetime.combine(local, time()) + quarter * 15 * MINUTE
                moment = wall.replace(tzinfo=zone).astimezone(UTC)
                if after < moment <= until and croniter.match(cron, wall):
                    expected.add(moment)
            local += timedelta(days=1)
    assert fire_times([cron], timezone, after=after, until=until) == sorted(expected)


# --- several crons, macros, limits ---------------------------------------------------


@pytest.mark.parametrize(
    ("crons", "timezone", "after", "until", "expected"),
    [
        pytest.param(
            ["0 9 * * 1-5", "0 9 * * 1", "30 17 * * MON-FRI"],
            BERLIN,
            "2026-11-28 00:00",  # a Saturday; Berlin is UTC+1 in winter
            "2026-12-05 00:00",
            [
                f"{day} {moment}"
                for day in ("2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04")
                for moment in ("08:00", "16:30")
            ],
            id="weekdays-merged-deduplicated",
        ),
        pytest.param(
            ["0 6 * * 6,0", "0 6 * * 5-7"],
            "UTC",
            "2026-11-26 12:00",  # Thursday noon
            "2026-12-01 00:00",
            ["2026-11-27 06:00", "2026-11-28 06:00", "2026-11-29 06:00"],
            id="weekend-ranges-7-is-sunday",
        ),
        pytest.param(
            ["@daily", "0 0 * * *", "@midnight", "@weekly"],
            "UTC",
            "2026-11-27 12:00",
            "2026-11-30 00:00",
            ["2026-11-28 00:00", "2026-11-29 00:00", "2026-11-30 00:00"],
            id="macros-deduplicated",
        ),
        pytest.param(
            ["@hourly"],
            "UTC",
            "2026-11-28 10:00",
            "2026-11-28 13:00",
            ["2026-11-28 11:00", "2026-11-28 12:00", "2026-11-28 13:00"],
            id="hourly-after-exclusive-until-inclusive",
        ),
        pytest.param(
            ["@monthly", "@yearly", "@annually"],
            "UTC",
            "2026-10-15 00:00",
            "2027-02-15 00:00",
            ["2026-11-01 00:00", "2026-12-01 00:00", "2027-01-01 00:00", "2027-02-01 00:00"],
            id="monthly-and-yearly",
        ),
        pytest.param(
            ["30 2 * * *", "30 3 * * *"],
            NY,
            "2026-03-08 00:00",
            "2026-03-08 12:00",
            ["2026-03-08 07:30"],  # 02:30 shifts to 03:30 EDT, which is the other cron's slot
            id="shifted-slot-meets-another-cron",
        ),
        pytest.param(
            ["0 0 1 * 1"],
            "UTC",
            "2026-11-28 00:00",
            "2026-12-15 00:00",
            ["2026-11-30 00:00", "2026-12-01 00:00", "2026-12-07 00:00", "2026-12-14 00:00"],
            id="day-of-month-or-day-of-week",
        ),
        pytest.param(["0 0 30 2 *"], "UTC", "2026-01-01 00:00", "2034-01-01 00:00", [], id="never"),
    ],
)
def test_fire_times(
    crons: list[str], timezone: str, after: str, until: str, expected: list[str]
) -> None:
    slots = fire_times(crons, timezone, after=utc(after), until=utc(until))
    assert slots == sorted({utc(e) for e in expected})
    assert all(s.tzinfo is UTC for s in slots)


def test_fire_times_limit_keeps_the_oldest() -> None:
    slots = fire_times(
        ["* * * * *", "*/2 * * * *"],
        "UTC",
        after=utc("2026-11-28 00:00"),
        until=utc("2026-12-28 00:00"),
        limit=5,
    )
    assert slots == every("2026-11-28 00:01", "2026-11-28 00:05", MINUTE)


def test_fire_times_accepts_any_aware_bounds() -> None:
    berlin = ZoneInfo(BERLIN)
    slots = fire_times(
        ["0 * * * *"],
        "UTC",
        after=datetime(2026, 11, 28, 11, 0, tzinfo=berlin),  # 10:00Z
        until=datetime(2026, 11, 28, 13, 0, tzinfo=berlin),  # 12:00Z
    )
    assert slots == [utc("2026-11-28 11:00"), utc("2026-11-28 12:00")]


@pytest.mark.parametrize(
    ("crons", "timezone", "after", "expected"),
    [
        pytest.param(
            ["0 6 * * 1-5"],
            BERLIN,
            "2026-11-27 06:00",  # Friday 07:00 local, after today's slot
            ["2026-11-30 05:00", "2026-12-01 05:00", "2026-12-02 05:00"],
            id="weekdays",
        ),
        pytest.param(
            ["0 0 29 2 *"],
            "UTC",
            "2026-01-01 00:00",
            ["2028-02-29 00:00", "2032-02-29 00:00", "2036-02-29 00:00"],
            id="leap-days-years-apart",
        ),
        pytest.param(["0 0 30 2 *"], "UTC", "2026-01-01 00:00", [], id="never-fires"),
        pytest.param(
            ["30 2 * * *"],
            NY,
            "2026-03-07 12:00",
            ["2026-03-08 07:30", "2026-03-09 06:30", "2026-03-10 06:30"],
            id="across-spring-forward",
        ),
    ],
)
def test_next_fire_times(crons: list[str], timezone: str, after: str, expected: list[str]) -> None:
    assert next_fire_times(crons, timezone, after=utc(after), count=3) == [utc(e) for e in expected]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda: fire_times(
                ["* * * * *"], "UTC", after=datetime(2026, 1, 1), until=utc("2026-01-02 00:00")
            ),
            id="naive-after",
        ),
        pytest.param(
            lambda: next_fire_times(["61 * * * *"], "UTC", after=utc("2026-01-01 00:00"), count=1),
            id="bad-cron",
        ),
        pytest.param(
            lambda: next_fire_times(
                ["* * * * *"], "Mars/Olympus", after=utc("2026-01-01 00:00"), count=1
            ),
            id="unknown-zone",
        ),
        pytest.param(lambda: slot_run_id("x", datetime(2026, 1, 1)), id="naive-slot"),
        pytest.param(lambda: CatchUpPolicy(max_runs=-1), id="negative-max-runs"),
    ],
)
def test_bad_input_is_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages are checked elsewhere
        call()


@pytest.mark.parametrize(
    ("expression", "fixed"),
    [
        pytest.param("30 2 * * *", True, id="daily-time"),
        pytest.param("0 9,17 * * 1-5", True, id="hour-list"),
        pytest.param("0 9-17 * * *", True, id="hour-range"),
        pytest.param("*/15 2 * * *", True, id="minute-step-in-a-fixed-hour"),
        pytest.param("@daily", True, id="daily-macro"),
        pytest.param("@weekly", True, id="weekly-macro"),
        pytest.param("*/15 * * * *", False, id="minute-step"),
        pytest.param("0 */2 * * *", False, id="hour-step"),
        pytest.param("0 1-23/2 * * *", False, id="hour-range-with-step"),
        pytest.param("5 * * * *", False, id="hourly-at-5"),
        pytest.param("0 0-23 * * *", False, id="every-hour-as-a-range"),
        pytest.param("@hourly", False, id="hourly-macro"),
        pytest.param("* * * * *", False, id="every-minute"),
    ],
)
def test_is_fixed_time(expression: str, fixed: bool) -> None:
    assert is_fixed_time(expression) is fixed


# --- run ids -----------------------------------------------------------------------------

NAME_48 = "a" * 20 + "-" + "b" * 27
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_slot_run_id_format() -> None:
    assert slot_run_id("daily-report", utc("2026-11-28 02:00")) == "daily-report-20261128t0200z"
    berlin_slot = datetime(2026, 11, 28, 3, 0, tzinfo=ZoneInfo(BERLIN))
    assert slot_run_id("daily-report", berlin_slot) == "daily-report-20261128t0200z"


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param(slot_run_id(NAME_48, utc("2026-12-31 23:59")), id="slot"),
        pytest.param(manual_run_id(NAME_48, "request-7f3a"), id="manual"),
    ],
)
def test_run_ids_are_dns_labels_for_48_char_names(run_id: str) -> None:
    assert len(NAME_48) == 48
    assert len(run_id) <= 63
    assert DNS_LABEL.match(run_id)
    assert check_label(run_id) is None


def test_manual_run_id_is_deterministic_per_token() -> None:
    first = manual_run_id("daily-report", "token-1")
    assert re.fullmatch(r"daily-report-m[0-9a-f]{12}", first)
    assert manual_run_id("daily-report", "token-1") == first
    assert manual_run_id("daily-report", "token-2") != first
    assert first != slot_run_id("daily-report", utc("2026-11-28 02:00"))


def test_schedule_hash() -> None:
    base = schedule_hash(["0 0 * * *", "*/5 * * * *"], BERLIN)
    assert schedule_hash(["*/5  * * * *", "@daily"], BERLIN) == base  # order, spacing, macros
    assert schedule_hash(["0 0 * * *", "*/5 * * * *"], NY) != base
    assert schedule_hash(["0 1 * * *", "*/5 * * * *"], BERLIN) != base


# --- decide ----------------------------------------------------------------------------------

HOURLY = ["0 * * * *"]
HOURLY_HASH = schedule_hash(HOURLY, "UTC")


def hourly_ledger(last_slot: str) -> Ledger:
    return Ledger(utc(last_slot), HOURLY_HASH)


def test_new_workflow_owes_nothing_before_its_creation() -> None:
    created = utc("2026-11-28 10:15")
    quiet = decide(HOURLY, "UTC", ledger=None, now=utc("2026-11-28 10:40"), start=created)
    assert (quiet.run, quiet.missed, quiet.missed_uncounted) == ((), (), 0)
    assert quiet.ledger == Ledger(created, HOURLY_HASH)

    first = decide(
        HOURLY,
        "UTC",
        ledger=None,
        now=utc("2026-11-28 11:00") + 20 * timedelta(seconds=1),
        start=created,
    )
    assert first.run == (utc("2026-11-28 11:00"),)
    assert (first.missed, first.missed_uncounted) == ((), 0)
    assert first.ledger == hourly_ledger("2026-11-28 11:00")


def test_new_workflow_seen_late_catches_up_from_its_creation() -> None:
    decision = decide(
        HOURLY, "UTC", ledger=None, now=utc("2026-11-28 09:30"), start=utc("2026-11-28 06:30")
    )
    assert decision.run == (utc("2026-11-28 09:00"),)
    assert decision.missed == (utc("2026-11-28 07:00"), utc("2026-11-28 08:00"))
    assert decision.ledger == hourly_ledger("2026-11-28 09:00")


@pytest.mark.parametrize("mode", ["none", "latest", "all"])
@pytest.mark.parametrize(
    ("late", "on_time"),
    [
        pytest.param(timedelta(seconds=0), True, id="at-the-slot"),
        pytest.param(timedelta(seconds=30), True, id="30s-late"),
        pytest.param(timedelta(seconds=60), True, id="60s-late-boundary"),
        pytest.param(timedelta(seconds=60, microseconds=1), False, id="just-over-60s"),
    ],
)
def test_on_time_slot_runs_whatever_the_mode(mode: CatchUp, late: timedelta, on_time: bool) -> None:
    policy = CatchUpPolicy(mode=mode, starting_deadline=timedelta(0))
    slot = utc("2026-11-28 11:00")
    decision = decide(
        HOURLY,
        "UTC",
        ledger=hourly_ledger("2026-11-28 10:00"),
        now=slot + late,
        start=slot,
        policy=policy,
    )
    assert decision.run == ((slot,) if on_time else ())
    assert decision.missed == (() if on_time else (slot,))
    assert decision.ledger == hourly_ledger("2026-11-28 11:00")


@pytest.mark.parametrize(
    "now",
    [
        pytest.param("2026-11-28 11:30", id="between-slots"),
        pytest.param("2026-11-28 11:00", id="at-the-ledger"),
        pytest.param("2026-11-28 10:30", id="clock-went-back"),
    ],
)
def test_nothing_due_keeps_the_ledger(now: str) -> None:
    ledger = hourly_ledger("2026-11-28 11:00")
    decision = decide(HOURLY, "UTC", ledger=ledger, now=utc(now), start=utc("2026-01-01 00:00"))
    assert decision.run == decision.missed == ()
    assert decision.missed_uncounted == 0
    assert decision.ledger == ledger


def test_schedule_change_computes_the_next_slot_from_now() -> None:
    old = Ledger(utc("2026-11-28 09:00"), schedule_hash(["0 */2 * * *"], "UTC"))
    now = utc("2026-11-28 12:30")
    changed = decide(HOURLY, "UTC", ledger=old, now=now, start=utc("2026-01-01 00:00"))
    assert (changed.run, changed.missed, changed.missed_uncounted) == ((), (), 0)
    assert changed.ledger == Ledger(now, HOURLY_HASH)
    following = decide(
        HOURLY, "UTC", ledger=changed.ledger, now=utc("2026-11-28 13:00:05"), start=now
    )
    assert following.run == (utc("2026-11-28 13:00"),)
    assert following.missed == ()


def test_changing_the_zone_is_a_schedule_change() -> None:
    ledger = Ledger(utc("2026-11-28 09:00"), schedule_hash(HOURLY, BERLIN))
    now = utc("2026-11-28 12:30")
    decision = decide(HOURLY, "UTC", ledger=ledger, now=now, start=now)
    assert decision.run == decision.missed == ()
    assert decision.ledger == Ledger(now, HOURLY_HASH)


S10, S11, S12, S13 = (utc(f"2026-11-28 {h}:00") for h in (10, 11, 12, 13))


@pytest.mark.parametrize(
    ("policy", "now", "run", "missed", "uncounted"),
    [
        pytest.param(CatchUpPolicy(mode="none"), "12:30", (), (S10, S11, S12), 0, id="none"),
        pytest.param(CatchUpPolicy(mode="latest"), "12:30", (S12,), (S10, S11), 0, id="latest"),
        pytest.param(
            CatchUpPolicy(mode="all"), "12:30", (S12,), (S10, S11), 0, id="all-deadline-1h"
        ),
        pytest.param(
            CatchUpPolicy(mode="all", starting_deadline=3 * HOUR),
            "12:30",
            (S10, S11, S12),
            (),
            0,
            id="all-deadline-3h",
        ),
        pytest.param(
            CatchUpPolicy(mode="all", starting_deadline=3 * HOUR, max_runs=2),
            "12:30",
            (S11, S12),
            (S10,),
            0,
            id="all-max-runs-2",
        ),
        pytest.param(
            CatchUpPolicy(mode="all", starting_deadline=3 * HOUR, max_runs=0),
            "12:30",
            (),
            (S10, S11, S12),
            0,
            id="all-max-runs-0",
        ),
        pytest.param(
            CatchUpPolicy(mode="latest", starting_deadline=30 * MINUTE),
            "12:45",
            (),
            (S10, S11, S12),
            0,
            id="latest-past-deadline",
        ),
        pytest.param(
            CatchUpPolicy(mode="all", starting_deadline=30 * MINUTE),
            "12:45",
            (),
            (S10, S11, S12),
            0,
            id="all-past-deadline",
        ),
        pytest.param(
            CatchUpPolicy(mode="latest", starting_deadline=HOUR),
            "13:00",
            (S12, S13),  # 12:00 is exactly one hour old: still within the deadline
            (S10, S11),
            0,
            id="latest-deadline-boundary",
        ),
        pytest.param(
            CatchUpPolicy(mode="none", max_recorded_misses=1),
            "12:30",
            (),
            (S12,),
            2,
            id="misses-beyond-the-cap-are-counted",
        ),
        pytest.param(
            CatchUpPolicy(mode="latest", max_recorded_misses=0),
            "12:30",
            (S12,),
            (),
            2,
            id="no-misses-recorded",
        ),
        pytest.param(
            CatchUpPolicy(mode="none", max_recorded_misses=0),
            "12:30",
            (),
            (),
            3,
            id="nothing-run-nothing-recorded",
        ),
    ],
)
def test_catch_up_after_a_three_hour_outage(
    policy: CatchUpPolicy,
    now: str,
    run: tuple[datetime, ...],
    missed: tuple[datetime, ...],
    uncounted: int,
) -> None:
    """The last slot decided was 09:00; the daemon was down from 09:30 until ``now``."""
    moment = utc(f"2026-11-28 {now}")
    decision = decide(
        HOURLY,
        "UTC",
        ledger=hourly_ledger("2026-11-28 09:00"),
        now=moment,
        start=S10,
        policy=policy,
    )
    assert decision.run == run
    assert decision.missed == missed
    assert decision.missed_uncounted == uncounted
    newest = S12 if moment < S13 else S13
    assert decision.ledger == Ledger(newest, HOURLY_HASH)


def test_on_time_slot_and_catch_up_together() -> None:
    """Back up a few seconds after 13:00: 13:00 is on time, 12:00 is the latest missed one."""
    decision = decide(
        HOURLY,
        "UTC",
        ledger=hourly_ledger("2026-11-28 09:00"),
        now=utc("2026-11-28 13:00:10"),
        start=S10,
        policy=CatchUpPolicy(mode="latest", starting_deadline=2 * HOUR),
    )
    assert decision.run == (S12, utc("2026-11-28 13:00"))
    assert decision.missed == (S10, S11)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("timezone", ["UTC", BERLIN, NY])
def test_a_year_of_downtime_every_minute(timezone: str) -> None:
    """525,600 slots missed: bounded work, the newest misses listed, the rest counted."""
    crons = ["* * * * *"]
    decision = decide(
        crons,
        timezone,
        ledger=Ledger(utc("2025-06-01 00:00"), schedule_hash(crons, timezone)),
        now=utc("2026-06-01 00:00:30"),
        start=utc("2025-01-01 00:00"),
    )
    assert decision.run == (utc("2026-05-31 23:59"), utc("2026-06-01 00:00"))
    assert decision.missed == tuple(every("2026-05-31 07:19", "2026-05-31 23:58", MINUTE))
    assert decision.missed_uncounted == 365 * 24 * 60 - 2 - 1000
    assert decision.ledger.last_slot == utc("2026-06-01 00:00")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("crons", "timezone", "total"),
    [
        pytest.param(["0 * * * *"], NY, 365 * 24, id="hourly-new-york"),
        pytest.param(["*/5 * * * *", "*/10 * * * *"], BERLIN, 365 * 24 * 12, id="merged-berlin"),
        pytest.param(["30 2 * * *"], BERLIN, 365, id="fixed-in-the-gap-berlin"),
        pytest.param(["30 1 * * *", "@daily"], NY, 2 * 365, id="fixed-in-the-overlap-new-york"),
        pytest.param(["0 9 * * 1-5"], "UTC", 261, id="weekdays"),
        pytest.param(["*/30 * * * *"], "Australia/Lord_Howe", 365 * 48, id="lord-howe"),
    ],
)
def test_a_year_of_downtime_counts_every_slot(crons: list[str], timezone: str, total: int) -> None:
    decision = decide(
        crons,
        timezone,
        ledger=Ledger(utc("2025-12-31 12:00"), schedule_hash(crons, timezone)),
        now=utc("2026-12-31 12:00"),
        start=utc("2025-01-01 00:00"),
        policy=CatchUpPolicy(
            mode="all", starting_deadline=3 * HOUR, max_runs=2, max_recorded_misses=7
        ),
    )
    assert len(decision.run) + len(decision.missed) + decision.missed_uncounted == total
    assert len(decision.missed) == 7
    decided = [*decision.missed, *decision.run]
    assert decided == sorted(decided)
    newest = fire_times(
        crons, timezone, after=utc("2026-12-11 12:00"), until=utc("2026-12-31 12:00"), limit=10**6
    )
    assert decided == newest[len(newest) - len(decided) :]
    assert decision.ledger.last_slot == newest[-1]


@settings(max_examples=40, deadline=None)
@given(
    cron=st.sampled_from(["*/7 * * * *", "0 * * * *", "30 2 * * *", "15 1-3 * * 0,6", "@daily"]),
    timezone=st.sampled_from([NY, BERLIN, "Australia/Lord_Howe", "America/Santiago"]),
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)),
)
def test_counting_agrees_with_listing(
    cron: str, timezone: str, start: datetime, length: timedelta
) -> None:
    after = start.replace(tzinfo=UTC)
    now = after + length
    decision = decide(
        [cron],
        timezone,
        ledger=Ledger(after, schedule_hash([cron], timezone)),
        now=now,
        start=after,
        policy=CatchUpPolicy(mode="none", on_time=timedelta(0), max_recorded_misses=3),
    )
    listed = fire_times([cron], timezone, after=after, until=now, limit=10**6)
    assert len(decision.run) + len(decision.missed) + decision.missed_uncounted == len(listed)
    assert [*decision.missed, *decision.run] == listed[
        len(listed) - len(decision.missed) - len(decision.run) :
    ]


# --- restart safety ------------------------------------------------------------------------------

TICK = timedelta(seconds=30)
TWO_DAYS = 2 * 24 * 60 * 2  # ticks


@settings(max_examples=12, deadline=None)
@given(
    crons=st.sampled_from(
        [["*/5 * * * *"], ["0 * * * *", "30 2 * * *"], ["30 1 * * *", "*/20 * * * *"], ["@daily"]]
    ),
    window=st.sampled_from(
        [(NY, "2026-10-31 12:00"), (BERLIN, "2026-03-28 12:00"), ("UTC", "2026-11-27 00:00")]
    ),
    mode=st.sampled_from(["none", "latest", "all"]),
    outages=st.lists(st.tuples(st.integers(0, TWO_DAYS), st.integers(1, 6 * 120)), max_size=6),
    crashes=st.sets(st.integers(0, TWO_DAYS), max_size=40),
    jitter=st.integers(0, 29_999_999),
)
def test_every_slot_is_decided_exactly_once_across_restarts(
    crons: list[str],
    window: tuple[str, str],
    mode: CatchUp,
    outages: list[tuple[int, int]],
    crashes: set[int],
    jitter: int,
) -> None:
    """Ticks every 30 s for two days; the daemon is down now and then (ticks skipped) and
    sometimes crashes after creating runs but before storing the ledger."""
    timezone, first = window
    created = utc(first)
    policy = CatchUpPolicy(mode=mode, starting_deadline=30 * MINUTE, max_runs=3)
    down = {tick for begin, length in outages for tick in range(begin, begin + length)}
    store: dict[str, str] = {}  # run id -> "run" | "missed"; creating an existing id is a no-op
    committed: Counter[datetime] = Counter()
    ledger: Ledger | None = None
    now = created
    for tick in range(TWO_DAYS + 1):
        if tick in down:
            continue
        now = created + tick * TICK + timedelta(microseconds=jitter)
        decision = decide(crons, timezone, ledger=ledger, now=now, start=created, policy=policy)
        assert decision.missed_uncounted == 0
        for slot in decision.run:
            assert now - slot <= max(policy.on_time, policy.starting_deadline)
            store.setdefault(slot_run_id("wf", slot), "run")
        for slot in decision.missed:
            store.setdefault(slot_run_id("wf", slot), "missed")
        if tick in crashes:
            continue  # the runs exist, the ledger was not stored: the next tick decides again
        committed.update([*decision.run, *decision.missed])
        ledger = decision.ledger
    decided_until = ledger.last_slot if ledger else created
    expected = fire_times(crons, timezone, after=created, until=decided_until, limit=10**6)
    assert set(committed) == set(expected)
    assert set(committed.values()) <= {1}
    ids = set(store)
    everything = fire_times(crons, timezone, after=created, until=now, limit=10**6)
    assert {slot_run_id("wf", s) for s in expected} <= ids
    assert ids <= {slot_run_id("wf", s) for s in everything}
    if not down and not crashes:
        assert set(store.values()) == {"run"}
