"""Durations written the way operators write them: ``90s``, ``15m``, ``1h30m``, ``2d``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)(d|h|m|s)")
_WHOLE = re.compile(r"^(?:\d+[dhms])+$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raise ValueError naming the accepted form."""
    compact = text.strip()
    if not _WHOLE.match(compact):
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 1h30m or 2d")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=seconds)
