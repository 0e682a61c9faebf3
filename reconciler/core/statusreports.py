"""What the status branch holds, rendered from runs, workflows and sync records (pure).

Layout::

    README.md                                        dashboard of every workflow
    sync.json                                        the last sync: revision, plan, errors per file
    workflows/<workspace>/<name>/status.json         state, applied revision, last runs, next run
    workflows/<workspace>/<name>/runs/<run-id>.json  one run: trigger, steps, times, log tails
    workflows/<workspace>/<name>/runs/<run-id>.md    the same for people, with a Mermaid DAG

One file per run means concurrent writers never edit the same file. Every
text goes through the redactor before it is rendered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.core.mermaid import dag_mermaid
from reconciler.core.runs import Run
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import AppliedWorkflow

Redact = Callable[[str], str]
ICONS = {
    "succeeded": "✅",
    "failed": "❌",
    "running": "🔄",
    "pending": "⏳",
    "cancelled": "⏹️",
    "skipped": "⏭️",
}


def workflow_dir(workspace: str, name: str) -> str:
    return f"workflows/{workspace}/{name}"


def run_paths(run: Run) -> tuple[str, str]:
    base = f"{workflow_dir(run.workspace, run.name)}/runs/{run.run_id}"
    return f"{base}.json", f"{base}.md"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _dump(document: Any) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def _images(run: Run) -> dict[str, str | None]:
    return {
        str(s["name"]): ((s.get("spec") or {}).get("stackSpec") or {}).get("image")
        for s in run.spec["spec"]["dag"]
    }


def run_document(run: Run, *, log_tails: Mapping[str, str], redact: Redact) -> dict[str, Any]:
    images = _images(run)
    return {
        "workspace": run.workspace,
        "workflow": run.name,
        "run": run.run_id,
        "revision": run.revision,
        "trigger": {
            "kind": run.trigger,
            "slot": _iso(run.slot),
            "requested_by": run.requested_by,
        },
        "state": run.state,
        "reason": redact(run.reason),
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": run.duration_seconds,
        "steps": [
            {
                "name": s.name,
                "depends": list(s.depends),
                "state": s.state,
                "image": images.get(s.name),
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
                "duration_seconds": s.duration_seconds,
                "exit_code": s.exit_code,
                "reason": redact(s.reason),
                "log_tail": redact(log_tails.get(s.name, "")),
            }
            for s in run.steps
        ],
    }


def render_run(run: Run, *, log_tails: Mapping[str, str], redact: Redact) -> dict[str, bytes]:
    """The run's JSON and Markdown report, by path."""
    document = run_document(run, log_tails=log_tails, redact=redact)
    json_path, md_path = run_paths(run)
    return {json_path: _dump(document), md_path: _run_markdown(run, document).encode()}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _run_markdown(run: Run, document: Mapping[str, Any]) -> str:
    states = {s.name: s.state for s in run.steps}
    trigger = (
        f"schedule slot {run.slot:%Y-%m-%d %H:%M} UTC"
        if run.trigger == "schedule" and run.slot is not None
        else f"manual, by {run.requested_by}"
    )
    lines = [
        f"# {ICONS.get(run.state, '')} {run.workspace}/{run.name} · run `{run.run_id}`",
        "",
        f"- **State:** {run.state}" + (f" ({_cell(document['reason'])})" if run.reason else ""),
        f"- **Trigger:** {trigger}",
        f"- **Revision:** `{run.revision}`",
        f"- **Started:** {document['started_at'] or '-'} · **Finished:** "
        f"{document['finished_at'] or '-'}"
        + (f" · **Duration:** {run.duration_seconds:.1f} s" if run.duration_seconds else ""),
        "",
        "```mermaid",
        dag_mermaid(run.spec["spec"]["dag"], states=states),
        "```",
        "",
        "| Step | State | Started | Duration | Exit | Reason |",
        "|---|---|---|---|---|---|",
    ]
    for step in document["steps"]:
        duration = f"{step['duration_seconds']:.1f} s" if step["duration_seconds"] else "-"
        exit_code = "-" if step["exit_code"] is None else step["exit_code"]
        lines.append(
            f"| `{step['name']}` | {ICONS.get(step['state'], '')} {step['state']} | "
            f"{step['started_at'] or '-'} | {duration} | {exit_code} | {_cell(step['reason'])} |"
        )
    for step in document["steps"]:
        if step["log_tail"]:
            lines += ["", f"<details><summary>Log of <code>{step['name']}</code> (tail)</summary>"]
            lines += ["", "```text", step["log_tail"].rstrip("\n").replace("```", "ʼʼʼ"), "```"]
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WorkflowSummary:
    """What the dashboard and status.json say about one workflow."""

    workflow: AppliedWorkflow
    runs: Sequence[Run]  # newest first
    next_run: datetime | None


def render_workflow_status(summary: WorkflowSummary, *, redact: Redact) -> dict[str, bytes]:
    workflow = summary.workflow
    document = {
        "workspace": workflow.workspace,
        "name": workflow.name,
        "state": workflow.state,
        "suspended": workflow.suspended,
        "applied_revision": workflow.revision,
        "path": workflow.path,
        "next_run": _iso(summary.next_run),
        "last_runs": [
            {
                "run": r.run_id,
                "state": r.state,
                "trigger": r.trigger,
                "started_at": _iso(r.started_at),
                "finished_at": _iso(r.finished_at),
                "duration_seconds": r.duration_seconds,
                "reason": redact(r.reason),
            }
            for r in summary.runs
        ],
    }
    return {f"{workflow_dir(workflow.workspace, workflow.name)}/status.json": _dump(document)}


def render_dashboard(
    summaries: Sequence[WorkflowSummary], *, last_sync: SyncRecord | None, now: datetime
) -> bytes:
    """README.md at the branch root: one table row per workflow, linking to the reports."""
    lines = [
        "# Workflow status",
        "",
        f"Updated {now:%Y-%m-%d %H:%M:%S} UTC by the Workflow reconciler. "
        "This branch is written by the daemon; do not edit it.",
        "",
    ]
    if last_sync is not None:
        revision = (last_sync.revision or "?")[:12]
        detail = ""
        if last_sync.errors:
            detail = f" — {len(last_sync.errors)} error(s), see [sync.json](sync.json)"
        elif last_sync.result in ("failed", "blocked"):  # the source or a guard: the message
            detail = " — why: see [sync.json](sync.json)"
        lines += [
            f"Last sync: **{last_sync.result}** at {last_sync.finished_at:%Y-%m-%d %H:%M:%S} UTC, "
            f"revision `{revision}`{detail}",
            "",
        ]
    lines += [
        "| Workflow | State | Last run | Result | Duration | Next run |",
        "|---|---|---|---|---|---|",
    ]
    for summary in sorted(summaries, key=lambda s: s.workflow.key):
        workflow = summary.workflow
        base = workflow_dir(workflow.workspace, workflow.name)
        state = workflow.state + (" (suspended)" if workflow.suspended else "")
        last = next((r for r in summary.runs if r.state != "skipped"), None)
        if last is None:
            run_cell, result, duration = "-", "-", "-"
        else:
            run_cell = f"[`{last.run_id}`]({base}/runs/{last.run_id}.md)"
            result = f"{ICONS.get(last.state, '')} {last.state}"
            duration = f"{last.duration_seconds:.1f} s" if last.duration_seconds else "-"
        upcoming = f"{summary.next_run:%Y-%m-%d %H:%M} UTC" if summary.next_run else "-"
        lines.append(
            f"| [{workflow.workspace}/{workflow.name}]({base}/status.json) | {state} | "
            f"{run_cell} | {result} | {duration} | {upcoming} |"
        )
    if not summaries:
        lines.append("| (no workflows applied) | | | | | |")
    return ("\n".join(lines) + "\n").encode()


def render_sync(record: SyncRecord, *, redact: Redact) -> bytes:
    document = {
        "revision": record.revision,
        "result": record.result,
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration_seconds": record.duration_seconds,
        "summary": record.summary,
        "message": redact(record.message),
        "source": json.loads(redact(json.dumps(record.source))),
        "plan": record.plan,
        "errors": json.loads(redact(json.dumps(record.errors))),
    }
    return _dump(document)


def keep_run_ids(runs: Sequence[Run], *, succeeded: int, failed: int) -> set[str]:
    """Retention: the newest ``succeeded`` succeeded runs and ``failed`` of every other end."""
    kept: set[str] = set()
    good = bad = 0
    for run in runs:  # newest first
        if run.state == "succeeded" and good < succeeded:
            kept.add(run.run_id)
            good += 1
        elif run.state != "succeeded" and bad < failed:
            kept.add(run.run_id)
            bad += 1
    return kept


def log_tail(data: bytes, *, lines: int = 40, limit: int = 8192) -> str:
    """The last lines of a log, at most ``limit`` bytes, decoded leniently."""
    tail = data[-limit:]
    text = tail.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
