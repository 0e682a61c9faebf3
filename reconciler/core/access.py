"""Who may use a Workflow: its owner, and the people and groups the owner grants.

"Use" means triggering runs, cancelling them, and reading runtime details
and logs. The owner is set by the repository's ``.reconciler.yaml``
(``access[].owner``) or, failing that, is the signer of the commit that
created the workflow (recorded when commit verification is on). Grants
(``access[].use``) name people or ``group:NAME``; who is in which group,
and each person's API token, is the daemon's config, never the repository's.
Pure: the rules, the recorded creator and the person arrive as values.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import Field

from reconciler.core.manifests import WireModel


class AccessRule(WireModel):
    """Workflows matching ``workflows`` (name or workspace/name globs) get an owner, grants."""

    workflows: tuple[str, ...] = Field(min_length=1)
    owner: str | None = None
    use: tuple[str, ...] = ()  # person names, or "group:NAME"

    def matches(self, workspace: str, name: str) -> bool:
        return any(
            fnmatch.fnmatchcase(f"{workspace}/{name}" if "/" in pattern else name, pattern)
            for pattern in self.workflows
        )


@dataclass(frozen=True)
class Person:
    name: str
    groups: frozenset[str]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    owner: str | None
    why: str


def owner_of(
    workspace: str, name: str, rules: Sequence[AccessRule], created_by: str | None
) -> str | None:
    """The first rule naming an owner for the workflow, else who created it."""
    for rule in rules:
        if rule.owner and rule.matches(workspace, name):
            return rule.owner
    return created_by


def may_use(
    person: Person,
    workspace: str,
    name: str,
    *,
    rules: Sequence[AccessRule],
    created_by: str | None,
) -> Decision:
    """Whether person may run, cancel and read the workflow, and why (for the audit log)."""
    owner = owner_of(workspace, name, rules, created_by)
    key = f"{workspace}/{name}"
    if owner is not None and person.name == owner:
        return Decision(True, owner, f"{person.name} owns {key}")
    for rule in rules:
        if rule.matches(workspace, name) and _granted(person, rule.use):
            return Decision(True, owner, f"{owner or 'the owner'} granted {key} to {person.name}")
    return Decision(
        False,
        owner,
        f"{person.name} may not use {key}: only its owner ({owner or 'none recorded'}) and "
        "those it grants in .reconciler.yaml (access[].use) may",
    )


def _granted(person: Person, grantees: Iterable[str]) -> bool:
    for grantee in grantees:
        if grantee == person.name:
            return True
        if grantee.startswith("group:") and grantee.removeprefix("group:") in person.groups:
            return True
    return False
