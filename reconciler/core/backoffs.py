"""Retry delays as data: exponential backoff with jitter, computed, never slept here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``base * factor**attempt`` capped at ``cap``, spread by ±``jitter`` (a share)."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    attempts: int = 4  # tries in all, the first included

    def delay(self, attempt: int, *, spread: float) -> float:
        """Seconds to wait before try ``attempt + 1``; ``spread`` is a random number in [0, 1)."""
        raw = min(self.cap, self.base * self.factor**attempt)
        return max(0.0, raw * (1 + self.jitter * (2 * spread - 1)))

    def should_retry(self, attempt: int) -> bool:
        """Whether another try follows try number ``attempt`` (0-based)."""
        return attempt + 1 < self.attempts
