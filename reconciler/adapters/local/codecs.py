"""Values in and out of the local SQLite state: timestamps, JSON, and write transactions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reconciler.ports import TerminalError


class Transaction:
    """One write transaction; commits only when something was written."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.wrote = False

    def write(self, sql: str, params: Sequence[object] = ()) -> None:
        self.conn.execute(sql, params)
        self.wrote = True


def to_text(moment: datetime) -> str:
    """ISO-8601 in UTC with fixed width, so text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TerminalError(f"refusing to store a naive datetime {moment.isoformat()}; use UTC")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def from_text(text: object, *, what: str) -> datetime:
    if not isinstance(text, str):
        raise TerminalError(f"{what} is {text!r}, not an ISO-8601 timestamp")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TerminalError(f"{what} is {text!r}, not an ISO-8601 timestamp") from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def dump_json(value: Mapping[str, Any] | Sequence[Any], *, what: str) -> str:
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
        )
    except (TypeError, ValueError) as exc:
        raise TerminalError(f"{what} cannot be stored as JSON: {exc}") from exc


def _plain(value: object) -> object:
    """JSON for the read-only mappings frozen models hand out; anything else is an error."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def load_json(text: object, *, what: str) -> Any:
    if not isinstance(text, str):
        raise TerminalError(f"{what} is {text!r}, not JSON text")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TerminalError(f"{what} is not valid JSON: {exc}") from exc
