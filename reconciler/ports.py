"""The protocols the core and the app talk to; adapters implement them.

Keeping them here, between ``core`` and ``adapters``, lets the app wire any
source or backend without knowing its library (GitPython, sqlite3, the
Kubernetes client), and lets tests drive each stage with plain values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Where time comes from: the system in production, a fake one in tests."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and timeouts."""
        ...
