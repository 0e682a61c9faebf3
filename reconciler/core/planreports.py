"""Plans written for people: a Markdown PR comment, plain text, and JSON for machines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.core.mermaid import dag_mermaid
from reconciler.core.planning import Action, Plan
from reconciler.core.problems import Problem
from reconciler.core.schedules import next_run_times

ICONS = {"create": "➕", "update": "✏️", "move": "🚚", "delete": "🗑️"}
VERBS = {"create": "Create", "update": "Update", "move": "Move", "delete": "Delete"}


@dataclass(frozen=True)
class PlanReport:
    """A plan with what it was made from."""

    plan: Plan
    base: str  # a revision, or "applied state"
    head: str
    errors: tuple[Problem, ...]
    now: datetime  # the moment next run times are counted from

    @property
    def exit_code(self) -> int:
        """0 no change, 2 changes, 1 invalid (as ``terraform plan -detailed-exitcode``)."""
        if self.errors:
            return 1
        return 2 if self.plan.has_changes or self.plan.held_deletes else 0


def _schedule_lines(spec: Mapping[str, Any], now: datetime) -> list[str]:
    schedule = spec["spec"].get("schedule")
    if not schedule:
        return ["runs on demand only (no schedule)"]
    times = next_run_times(schedule["crons"], schedule["timezone"], after=now, count=3)
    shown = ", ".join(t.strftime("%Y-%m-%d %H:%M %Z") for t in times)
    policy = schedule["concurrencyPolicy"]
    return [f"next runs ({schedule['timezone']}, {policy}): {shown}"]


def _summary_line(plan: Plan) -> str:
    counts = plan.summary()
    parts = [f"{counts[k]} to {k}" for k in ("create", "update", "move", "delete")]
    line = ", ".join(parts) + f"; {counts['unchanged']} unchanged"
    if counts["held_delete"]:
        line += f"; {counts['held_delete']} deletion(s) held"
    if counts["kept_invalid"]:
        line += f"; {counts['kept_invalid']} kept as applied (invalid manifest)"
    return line


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: PlanReport) -> str:
    """A PR comment: summary, errors, holds, then one section per changed workflow."""
    plan = report.plan
    out = [f"### Workflow plan `{report.base}` → `{report.head}`", "", f"**{_summary_line(plan)}**"]
    if report.errors:
        out += [
            "",
            f"> [!CAUTION]\n> **{len(report.errors)} validation error(s)**: fix them before "
            "merging. Nothing is deleted while any manifest is invalid.",
            "",
            "| File | Line | Field | Problem |",
            "|---|---|---|---|",
        ]
        for error in report.errors:
            where = f"{error.line}:{error.column}" if error.line is not None else ""
            out.append(
                f"| `{_md_cell(error.path)}` | {where} | `{_md_cell(error.field or '-')}` "
                f"| {_md_cell(error.message)} |"
            )
    if plan.kept_invalid:
        out += ["", "Kept exactly as applied until their manifests are fixed:"]
        out += [f"- `{a.key}` ({a.current_path})" for a in plan.kept_invalid]
    for hold in plan.holds:
        out += ["", f"> [!WARNING]\n> **{hold.reason}**: {_md_cell(hold.message)}"]
        for action in plan.held_deletes:
            out.append(f"> - `{action.key}` ({action.current_path})")
    if not plan.has_changes and not report.errors and not plan.held_deletes:
        out += ["", "No changes: merging leaves every Workflow as it is."]
    for action in plan.actions:
        out += ["", *_markdown_action(action, report.now)]
    return "\n".join(out) + "\n"


def _markdown_action(action: Action, now: datetime) -> list[str]:
    path = action.desired.path if action.desired else action.current_path
    lines = [f"#### {ICONS[action.kind]} {VERBS[action.kind]} `{action.key}`", ""]
    if action.kind == "move":
        lines.append(f"`{action.current_path}` → `{path}` (same spec; runs and history kept)")
        return lines
    lines.append(f"File: `{path}`")
    if action.kind == "delete" or action.desired is None:
        return lines
    if action.kind == "update":
        if action.current_path and action.current_path != path:
            lines.append(f"Moved from `{action.current_path}`")
        lines += ["", "| Field | Before | After |", "|---|---|---|"]
        for change in action.changes:
            before = "" if change.kind == "added" else f"`{_md_cell(repr(change.old))}`"
            after = "" if change.kind == "removed" else f"`{_md_cell(repr(change.new))}`"
            lines.append(f"| `{_md_cell(change.path)}` | {before} | {after} |")
    spec = action.desired.spec
    lines += ["", *(f"- {line}" for line in _schedule_lines(spec, now))]
    if action.kind == "create" or any(c.path.startswith("spec.dag") for c in action.changes):
        lines += ["", "```mermaid", dag_mermaid(spec["spec"]["dag"]), "```"]
    return lines


def render_text(report: PlanReport) -> str:
    """Plain lines for a terminal."""
    out = [f"plan {report.base} -> {report.head}: {_summary_line(report.plan)}"]
    out += [f"error: {e.render()}" for e in report.errors]
    out += [f"kept    {a.key} (invalid: {a.current_path})" for a in report.plan.kept_invalid]
    for hold in report.plan.holds:
        out.append(f"held: {hold.reason}: {hold.message}")
        out += [f"  held delete {a.key} ({a.current_path})" for a in report.plan.held_deletes]
    for action in report.plan.actions:
        path = action.desired.path if action.desired else action.current_path
        if action.kind == "move":
            out.append(f"{action.kind:7} {action.key}  {action.current_path} -> {path}")
            continue
        out.append(f"{action.kind:7} {action.key}  ({path})")
        out += [f"          {c.render()}" for c in action.changes]
        if action.desired is not None and action.kind in ("create", "update"):
            out += [
                f"          {line}" for line in _schedule_lines(action.desired.spec, report.now)
            ]
    return "\n".join(out) + "\n"


def report_as_dict(report: PlanReport) -> dict[str, Any]:
    def next_runs(action: Action) -> Sequence[str]:
        if action.desired is None or action.kind not in ("create", "update"):
            return []
        schedule = action.desired.spec["spec"].get("schedule")
        if not schedule:
            return []
        times = next_run_times(schedule["crons"], schedule["timezone"], after=report.now, count=3)
        return [t.isoformat() for t in times]

    return {
        "base": report.base,
        "head": report.head,
        "summary": report.plan.summary(),
        "errors": [e.as_dict() for e in report.errors],
        "holds": [{"reason": h.reason, "message": h.message} for h in report.plan.holds],
        "held_deletes": [a.as_dict() for a in report.plan.held_deletes],
        "kept_invalid": [a.as_dict() for a in report.plan.kept_invalid],
        "actions": [{**a.as_dict(), "next_runs": next_runs(a)} for a in report.plan.actions],
    }
