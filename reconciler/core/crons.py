"""Checking cron expressions the way Kubernetes CronJob accepts them.

A schedule is five fields (minute hour day-of-month month day-of-week), or one
of the ``@yearly``-style macros. Seconds fields, ``@reboot`` and inline
``TZ=``/``CRON_TZ=`` prefixes are refused: the time zone has its own field.
"""

from __future__ import annotations

import functools

from croniter import croniter

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def expand_cron(expression: str) -> str:
    """Return the five-field form of an expression (macros expanded)."""
    text = " ".join(expression.split())
    return MACROS.get(text, text)


@functools.lru_cache(maxsize=4096)
def check_cron(expression: str) -> str | None:
    """Return None when the expression is a valid schedule, else what is wrong.

    Cached: croniter's parser is slow and a repository repeats its schedules.
    """
    text = " ".join(expression.split())
    if not text:
        return "empty cron expression; use five fields such as '0 2 * * *'"
    upper = text.upper()
    if upper.startswith(("TZ=", "CRON_TZ=")):
        return "time zone prefixes are not allowed here; set spec.schedule.timezone instead"
    if text.startswith("@"):
        if text in MACROS:
            return None
        known = ", ".join(sorted(MACROS))
        return f"unknown macro {text!r}; use five fields or one of {known}"
    fields = text.split(" ")
    if len(fields) != 5:
        return (
            f"expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {text!r}"
        )
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression (e.g. '*/15 * * * *' or '0 2 * * 1-5')"
    return None
