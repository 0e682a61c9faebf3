"""Scrubbing secrets from text before it leaves the daemon (status branch, logs, events).

Two nets: the exact secret values the daemon knows (its secret store), and
the shapes of common credentials (GitHub, GitLab, Slack, AWS keys, bearer
tokens, JWTs, passwords in URLs), for secrets it never saw.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words

TOKEN_SHAPES = (
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}\b"),
    re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}\b"),  # GitLab personal access tokens
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"),  # JWTs
    re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{16,}"),  # Authorization: Bearer ...
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
)


class Redactor:
    """Replaces known secret values and token shapes with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._known = _pattern(secrets)

    def __call__(self, text: str) -> str:
        known = self._known
        if known is not None:
            text = known.sub(MASK, text)
        for shape in TOKEN_SHAPES:
            text = shape.sub(MASK, text)
        return text


class LiveRedactor(Redactor):
    """A Redactor that reads the known values again whenever ``stamp()`` changes, so a
    secret set while the daemon runs is redacted from then on (not only after a restart).

    ``values`` and ``stamp`` are the caller's (the secret store's); a ``values`` that fails
    keeps the values known so far, and is asked again on the next call.
    """

    def __init__(self, values: Callable[[], Iterable[str]], *, stamp: Callable[[], object]) -> None:
        self._values = values
        self._stamp = stamp
        self._seen = stamp()  # before the values: a change in between is read again
        self._lock = threading.Lock()
        super().__init__(values())

    def __call__(self, text: str) -> str:
        self.snapshot()
        return super().__call__(text)

    def snapshot(self) -> Redactor:
        """A Redactor of the values known now, checking the stamp once: for a caller that
        redacts many strings in one go (a log record's fields), where checking before
        each string would read the secret store's stamp once per field."""
        current = self._stamp()
        if current != self._seen:
            self._refresh(current)
        frozen = Redactor()
        frozen._known = self._known
        return frozen

    def _refresh(self, current: object) -> None:
        with self._lock:
            if current == self._seen:
                return
            try:
                known = _pattern(self._values())
            except Exception:  # keep the values known so far; read again on the next call
                return
            self._known, self._seen = known, current


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in values)) if values else None
