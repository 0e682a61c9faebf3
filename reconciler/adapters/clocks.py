"""The system clock behind the ``Clock`` port, and a warped one for simulations and tests.

``WarpedClock`` (the ``clock_warp`` setting, e.g. ``"60x@2026-05-10T12:00:00Z"``) makes
the wall clock run ``rate`` times as fast as the real one, so a test can go through a hundred
every-minute cron slots in a couple of minutes. Only ``now()`` is warped: ``monotonic()``
stays real, so timeouts, grace periods and lease timings keep their real meaning. Its reading
is a function of the real wall clock alone (``start + (real - anchor) * rate``), so every
process given the same setting (a daemon restarted after a crash, a second replica, the
command line) reads the same warped time, and it never goes back across restarts.

libfaketime (``LD_PRELOAD``) was tried for this first and does not fit Python 3.11 here: with
a faked ``CLOCK_MONOTONIC``, ``threading.Event.wait`` hangs (its ``sem_clockwait`` deadline
is compared by the kernel against the real clock), and with ``FAKETIME_DONT_FAKE_MONOTONIC``
``time.sleep`` fails with EINVAL.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta


class SystemClock:
    rate = 1.0  # clock seconds per real second

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class WarpedClock(SystemClock):
    """For simulations and tests: reads ``start`` at the real instant ``anchor`` (default:
    ``start`` itself) and runs ``rate`` times as fast as the real clock from there."""

    def __init__(self, rate: float, start: datetime, anchor: datetime | None = None) -> None:
        if rate <= 0:
            raise ValueError("a clock warp rate must be positive")
        if start.tzinfo is None or (anchor is not None and anchor.tzinfo is None):
            raise ValueError("a clock warp's times must carry a time zone (Z or +00:00)")
        self.rate = rate
        self.start = start.astimezone(UTC)
        self.anchor = (anchor or start).timestamp()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.rate)

    def __repr__(self) -> str:
        anchor = datetime.fromtimestamp(self.anchor, UTC)
        return f"WarpedClock({self.rate:g}x from {self.start.isoformat()} at {anchor.isoformat()})"


_WARP = re.compile(r"^\s*(?P<rate>[0-9]+(?:\.[0-9]+)?)x@(?P<start>[^/]+?)(?:/(?P<anchor>.+?))?\s*$")


def parse_clock_warp(text: str) -> WarpedClock:
    """``RATEx@START[/ANCHOR]`` (ISO 8601 times with a zone): the clock reads START at the
    real instant ANCHOR (default START) and runs RATE times as fast. ValueError if malformed."""
    match = _WARP.match(text)
    if match is None:
        raise ValueError(
            f"clock warp {text!r}: expected RATEx@START[/ANCHOR], e.g. 60x@2026-05-10T12:00:00Z"
        )
    try:
        start = datetime.fromisoformat(match["start"])
        anchor = datetime.fromisoformat(match["anchor"]) if match["anchor"] else None
    except ValueError as exc:
        raise ValueError(f"clock warp {text!r}: {exc}") from exc
    return WarpedClock(float(match["rate"]), start, anchor)
