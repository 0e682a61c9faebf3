"""Identifier types and the naming rules every backend can live with.

Names end up as Kubernetes object names, label values, container names,
directory names and SQLite keys, so they follow RFC 1123 labels. Workflow
and step names are capped at 48 characters: a run id is ``<workflow>-<12
chars>`` and must stay within the 63-character label-value limit, and a step
name is a container name and a label value on its Job.
"""

from __future__ import annotations

import re
from typing import NewType

WorkflowKey = NewType("WorkflowKey", str)  # "<workspace>/<name>"
Revision = NewType("Revision", str)  # a git commit id
RunId = NewType("RunId", str)

MAX_WORKFLOW_NAME = 48
MAX_STEP_NAME = 48
MAX_LABEL = 63

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_label(value: str, *, limit: int = MAX_LABEL, what: str = "name") -> str | None:
    """None when value is an RFC 1123 label within limit, else what to change."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > limit:
        return f"{what} {value!r} is {len(value)} characters; the limit is {limit}"
    if not _LABEL.fullmatch(value):  # not match: "$" also matches before a final "\n"
        hint = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-") or "my-name"
        return (
            f"{what} {value!r} must be lower-case letters, digits and '-', starting and "
            f"ending with a letter or digit (RFC 1123), e.g. {hint[:limit]!r}"
        )
    return None


def check_identifier(value: str, *, what: str) -> str | None:
    """None when value is a C-style identifier (env var names, aliases)."""
    if _IDENTIFIER.fullmatch(value):
        return None
    return f"{what} {value!r} must start with a letter or '_' and hold only letters, digits, '_'"


def workflow_key(workspace: str, name: str) -> WorkflowKey:
    """The key a workflow is known by across the system."""
    return WorkflowKey(f"{workspace}/{name}")
