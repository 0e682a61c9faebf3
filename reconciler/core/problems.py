"""Problems found in manifests, and how they are written for people and machines.

A ``Finding`` is where in a document something is wrong (a loc path); the
loader turns it into a ``Problem`` by adding the file, line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.core.yamldocs import Loc as Loc  # re-exported: findings are located by it

Severity = Literal["error", "note"]


def render_loc(loc: Loc) -> str:
    """``("spec", "dag", 0, "name")`` -> ``spec.dag[0].name``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Finding:
    """Something wrong at a place inside one document."""

    loc: Loc
    message: str
    at_key: bool = False  # point at the key rather than the value (unknown/missing fields)


@dataclass(frozen=True, order=True)
class Problem:
    """A finding placed in a file: ``PATH:LINE:COL: FIELD: message``."""

    path: str
    line: int | None
    column: int | None
    field: str
    message: str
    severity: Severity = "error"

    def render(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = self.field or "<file>"
        prefix = "note: " if self.severity == "note" else ""
        return f"{where}: {field}: {prefix}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }
