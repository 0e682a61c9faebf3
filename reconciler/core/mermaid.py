"""Mermaid diagrams of a Workflow's DAG, for PR plans and status reports.

GitHub and GitLab render ```mermaid blocks; step states colour the nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

STATE_STYLES = {
    "succeeded": "fill:#d3f9d8,stroke:#2b8a3e",
    "failed": "fill:#ffe3e3,stroke:#c92a2a",
    "running": "fill:#d0ebff,stroke:#1971c2",
    "pending": "fill:#f1f3f5,stroke:#868e96",
    "skipped": "fill:#fff3bf,stroke:#e67700",
    "cancelled": "fill:#e9ecef,stroke:#495057,stroke-dasharray: 4 2",
}


def _node_id(name: str) -> str:
    return "s_" + name.replace("-", "_")


def _label(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", " ")


def dag_mermaid(
    steps: Sequence[Mapping[str, Any]], *, states: Mapping[str, str] | None = None
) -> str:
    """A ``graph LR`` of steps (dicts with name, title, depends), coloured by state."""
    lines = ["graph LR"]
    for step in steps:
        name = str(step["name"])
        label = _label(str(step.get("title") or name))
        if states and name in states:
            label += f"<br/><i>{states[name]}</i>"
        lines.append(f'  {_node_id(name)}["{label}"]')
    for step in steps:
        for upstream in step.get("depends") or ():
            lines.append(f"  {_node_id(str(upstream))} --> {_node_id(str(step['name']))}")
    if states:
        for state, style in STATE_STYLES.items():
            members = [_node_id(n) for n, s in states.items() if s == state]
            if members:
                lines.append(f"  classDef {state} {style}")
                lines.append(f"  class {','.join(members)} {state}")
    return "\n".join(lines)
