"""``${NAME}`` variables in manifests, filled from the repo config.

The seed's examples use ``${SHARED_VOLUME_ID}``. Values come from the
``variables`` map of the manifests repo's ``.reconciler.yaml``; the daemon's
environment may override one with ``RECONCILER_VAR_<NAME>`` (read by the app
layer and passed in). ``$${NAME}`` writes a literal ``${NAME}``. A
``${{...}}`` placeholder, as in the seed's syntax template, is reported as
not filled in. Only string values are substituted, never keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.core.problems import Finding, Loc

ENV_PREFIX = "RECONCILER_VAR_"
_VARIABLE = re.compile(r"\$(\$?)\{([^{}]*)\}")
_PLACEHOLDER = re.compile(r"\$\{\{.*?\}\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def substitute_variables(data: Any, variables: Mapping[str, str]) -> tuple[Any, list[Finding]]:
    """Return data with every ``${NAME}`` replaced, and a finding per bad reference."""
    findings: list[Finding] = []

    def substitute(text: str, loc: Loc) -> str:
        if "$" not in text:
            return text
        placeholder = _PLACEHOLDER.search(text)
        if placeholder:
            findings.append(
                Finding(loc, f"placeholder {placeholder.group(0)} is not filled in; replace it")
            )
            return text

        def replace(match: re.Match[str]) -> str:
            escaped, name = match.group(1), match.group(2)
            if escaped:
                return "${" + name + "}"
            if not _NAME.fullmatch(name):
                findings.append(Finding(loc, f"${{{name}}} is not a valid variable name"))
            elif name not in variables:
                findings.append(
                    Finding(
                        loc,
                        f"undefined variable ${{{name}}}; define it under 'variables' in "
                        f".reconciler.yaml or set {ENV_PREFIX}{name} (for a literal, "
                        f"such as a shell variable, write $${{{name}}})",
                    )
                )
            else:
                return variables[name]
            return match.group(0)

        return _VARIABLE.sub(replace, text)

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            return substitute(node, loc)
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*loc, i)) for i, value in enumerate(node)]
        return node

    return walk(data, ()), findings


def merge_variables(
    configured: Mapping[str, str], environment: Mapping[str, str]
) -> dict[str, str]:
    """Configured variables, overridden by ``RECONCILER_VAR_<NAME>`` entries of environment."""
    merged = dict(configured)
    for key, value in environment.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            merged[key[len(ENV_PREFIX) :]] = value
    return merged
