"""Projection templates: ``{{.defaultProjections.KEY}}`` and ``{{.secrets.ALIAS.KEY}}``.

Templates stay in the manifest and are resolved per run (run id, step, slot
time...). They are checked at load time: only the two forms above exist, a
default projection must be one of ``DEFAULT_PROJECTIONS``, and a secret
alias must be declared by a ``secrets[]`` entry in scope. Anything else
(Go template functions, pipelines, other roots) is refused, so a manifest
cannot reach data the daemon did not mean to give it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_PROJECTIONS: Mapping[str, str] = {
    "dataOsRunId": "the run id, unique per run (e.g. daily-report-20261128t0200z)",
    "runId": "same as dataOsRunId",
    "workflowName": "the Workflow's name",
    "workspace": "the Workflow's workspace",
    "stepName": "the step's name",
    "scheduledTime": "the nominal slot time (ISO 8601, UTC); the trigger time of manual runs",
    "sourceRevision": "the git revision the run's manifest came from",
}

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_DEFAULT = re.compile(r"^\.defaultProjections\.([A-Za-z_][A-Za-z0-9_]*)$")
_SECRET = re.compile(r"^\.secrets\.([A-Za-z_][A-Za-z0-9_]*)\.([-A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class DefaultRef:
    key: str


@dataclass(frozen=True)
class SecretRef:
    alias: str
    key: str


TemplateRef = DefaultRef | SecretRef


@dataclass(frozen=True)
class Part:
    """A piece of a templated value: literal text or a reference."""

    text: str
    ref: TemplateRef | None = None


def parse_template(value: str) -> list[Part]:
    """Split a value into literal parts and references; raise ValueError when malformed."""
    parts: list[Part] = []
    last = 0
    for match in _TEMPLATE.finditer(value):
        if match.start() > last:
            parts.append(Part(value[last : match.start()]))
        parts.append(Part(match.group(0), _parse_reference(match.group(1).strip())))
        last = match.end()
    rest = value[last:]
    if "{{" in rest:
        raise ValueError("'{{' is not closed by '}}'")
    if rest:
        parts.append(Part(rest))
    return parts


def _parse_reference(expression: str) -> TemplateRef:
    if match := _DEFAULT.match(expression):
        key = match.group(1)
        if key not in DEFAULT_PROJECTIONS:
            known = ", ".join(DEFAULT_PROJECTIONS)
            raise ValueError(f"unknown default projection {key!r}; known: {known}")
        return DefaultRef(key)
    if match := _SECRET.match(expression):
        return SecretRef(match.group(1), match.group(2))
    raise ValueError(
        f"unsupported template {{{{{expression}}}}}; use {{{{.defaultProjections.KEY}}}} "
        "or {{.secrets.ALIAS.KEY}}"
    )


def check_template(value: str, *, secret_aliases: frozenset[str]) -> list[str]:
    """Every problem with the templates in value, given the aliases in scope."""
    try:
        parts = parse_template(value)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    for part in parts:
        if isinstance(part.ref, SecretRef) and part.ref.alias not in secret_aliases:
            declared = ", ".join(sorted(secret_aliases)) or "none"
            problems.append(
                f"secret alias {part.ref.alias!r} is not declared by a secrets[] entry in "
                f"scope (declared: {declared}); add one with contextAlias: {part.ref.alias}"
            )
    return problems


def render_template(value: str, resolve: Callable[[TemplateRef], str]) -> str:
    """Replace every reference in value with what resolve gives for it."""
    return "".join(
        part.text if part.ref is None else resolve(part.ref) for part in parse_template(value)
    )


def secret_refs(value: str) -> list[SecretRef]:
    return [p.ref for p in parse_template(value) if isinstance(p.ref, SecretRef)]
