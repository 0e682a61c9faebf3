"""Who is told about a finished run, and what they are told (pure).

The manifests repository says *who* in ``.reconciler.yaml``::

    notifications:
      - target: team-slack          # a target the daemon knows (its settings hold the URL)
        on: [failure, recovery]     # default: [failure]
        workflows: ["daily-*", "finance/*"]   # name globs, or workspace/name globs
        tags: ["team:data"]         # any of these tags

A rule with neither ``workflows`` nor ``tags`` matches every workflow; with
both, a workflow must match each (a glob and a tag). The daemon's settings say
*where* (the URL is a secret, so it never lives in the repository).

Kinds: ``failure`` (the run failed), ``success`` (it succeeded) and
``recovery`` (it succeeded and the workflow's previous finished run had
failed). Cancelled and skipped runs notify nobody. A target hears about a run
at most once: of the kinds its rules ask for, the first in the order
failure, recovery, success.

Payloads carry no log content, and every reason goes through the caller's
redactor: a step's reason could in theory carry a value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from reconciler.core.manifests import WireModel
from reconciler.core.runs import Run

NotificationKind = Literal["failure", "success", "recovery"]
KIND_ORDER: tuple[NotificationKind, ...] = ("failure", "recovery", "success")
Redact = Callable[[str], str]

_Pattern = Annotated[str, Field(min_length=1, max_length=253)]


class NotificationRule(WireModel):
    """One entry of ``notifications:`` in ``.reconciler.yaml``."""

    target: Annotated[str, Field(min_length=1, max_length=253)]
    on: Annotated[tuple[NotificationKind, ...], Field(min_length=1)] = ("failure",)
    workflows: tuple[_Pattern, ...] = ()
    tags: tuple[_Pattern, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_and_empty(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare ``on:`` key as ``True``; an empty key is unset.

        ``on: failure`` is ``on: [failure]``.
        """
        if not isinstance(data, dict):
            return data
        cleaned: dict[Any, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            name = "on" if key is True and "on" not in data else key
            cleaned[name] = (value,) if name == "on" and isinstance(value, str) else value
        return cleaned

    def matches(self, *, workspace: str, name: str, tags: Iterable[str]) -> bool:
        """Whether this rule covers the workflow ``workspace/name`` with ``tags``."""
        if self.workflows and not any(
            fnmatch.fnmatchcase(f"{workspace}/{name}" if "/" in pattern else name, pattern)
            for pattern in self.workflows
        ):
            return False
        return not self.tags or not set(self.tags).isdisjoint(tags)


def kinds_for(run: Run, previous: Run | None) -> set[NotificationKind]:
    """What a finished run is news of; ``previous``: the workflow's last finished run before it.

    ``previous`` counts only when it is another run of the same workflow.
    """
    if run.state == "failed":
        return {"failure"}
    if run.state != "succeeded":
        return set()  # cancelled, skipped, or not finished
    kinds: set[NotificationKind] = {"success"}
    if (
        previous is not None
        and previous.key == run.key
        and previous.run_id != run.run_id
        and previous.state == "failed"
    ):
        kinds.add("recovery")
    return kinds


def previous_outcome(run: Run, history: Iterable[Run]) -> Run | None:
    """The run of ``history`` that tells whether ``run`` is a recovery, if any.

    The latest run of the same workflow that finished (succeeded or failed)
    before ``run`` finished; cancelled and skipped runs say nothing about a
    workflow's health and are passed over.
    """
    end = run.finished_at
    candidates = [
        (other.finished_at, other.created_at, other)
        for other in history
        if other.key == run.key
        and other.run_id != run.run_id
        and other.state in ("succeeded", "failed")
        and other.finished_at is not None
        and (end is None or other.finished_at <= end)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda entry: (entry[0], entry[1]))[2]


def select(
    rules: Sequence[NotificationRule],
    *,
    workspace: str,
    name: str,
    tags: Iterable[str],
    kinds: Iterable[str],
) -> list[tuple[str, NotificationKind]]:
    """``(target, kind)`` pairs to send, each target once, in the order rules name them."""
    wanted = set(kinds)
    if not wanted:
        return []
    tag_set = frozenset(tags)
    chosen: dict[str, set[str]] = {}
    for rule in rules:
        hits = wanted.intersection(rule.on)
        if hits and rule.matches(workspace=workspace, name=name, tags=tag_set):
            chosen.setdefault(rule.target, set()).update(hits)
    return [
        (target, next(kind for kind in KIND_ORDER if kind in hits))
        for target, hits in chosen.items()
    ]


def unknown_targets(rules: Sequence[NotificationRule], known: Iterable[str]) -> list[str]:
    """Targets the rules name that are not in ``known``, in first-mention order."""
    have = set(known)
    return list(dict.fromkeys(rule.target for rule in rules if rule.target not in have))


# --------------------------------------------------------------------------- payloads

_HEADLINES: Mapping[str, tuple[str, str]] = {
    "failure": ("❌", "failed"),
    "recovery": ("✅", "recovered"),
    "success": ("✅", "succeeded"),
}
MAX_LISTED_STEPS = 10
MAX_REASON = 500


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_duration(seconds: float | None) -> str:
    """``83.4`` -> ``1m 23s``; None -> ``-``."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def summary(run: Run, kind: str, *, redact: Redact) -> str:
    """One line: ``❌ public/daily-report failed: step(s) failed: extract (run ..., 1m 3s)``."""
    icon, verb = _HEADLINES.get(kind, ("ℹ️", kind))
    text = f"{icon} {run.workspace}/{run.name} {verb}"
    if kind == "failure" and run.reason:
        text += f": {_short(redact(run.reason), MAX_REASON)}"
    trigger = "scheduled" if run.trigger == "schedule" else "manual"
    return f"{text} (run {run.run_id}, {trigger}, {format_duration(run.duration_seconds)})"


def generic_payload(
    run: Run, kind: str, *, workflow_tags: Sequence[str] = (), redact: Redact
) -> dict[str, Any]:
    """A plain JSON document of the run, for any webhook receiver."""
    return {
        "kind": kind,
        "workspace": run.workspace,
        "workflow": run.name,
        "run_id": run.run_id,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "revision": run.revision,
        "tags": list(workflow_tags),
        "state": run.state,
        "reason": redact(run.reason),
        "slot": _iso(run.slot),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": run.duration_seconds,
        "steps": [
            {
                "name": step.name,
                "state": step.state,
                "exit_code": step.exit_code,
                "reason": redact(step.reason),
            }
            for step in run.steps
        ],
        "text": summary(run, kind, redact=redact),
    }


def _mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped (no ``<!channel>`` from a reason)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "`" + _mrkdwn(text).replace("`", "'") + "`"


def slack_payload(
    run: Run, kind: str, *, workflow_tags: Sequence[str] = (), redact: Redact
) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (fallback) and Block Kit ``blocks``."""
    icon, verb = _HEADLINES.get(kind, ("ℹ️", kind))
    text = summary(run, kind, redact=redact)
    header = _short(f"{icon} {run.workspace}/{run.name} {verb}", 150)
    trigger = "scheduled" if run.trigger == "schedule" else f"manual ({run.requested_by})"
    fields = [
        f"*Workflow*\n{_code(f'{run.workspace}/{run.name}')}",
        f"*Run*\n{_code(run.run_id)}",
        f"*Trigger*\n{_mrkdwn(trigger)}",
        f"*Duration*\n{format_duration(run.duration_seconds)}",
        f"*Revision*\n{_code(run.revision[:12])}",
    ]
    if run.finished_at is not None:
        fields.append(f"*Finished*\n{run.finished_at.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _short(field, 2000)} for field in fields],
        },
    ]
    if kind == "failure":
        failed = [step for step in run.steps if step.state == "failed"]
        if failed:
            section = "*Failed steps*"
            for shown, step in enumerate(failed):
                line = f"• {_code(step.name)}: {_mrkdwn(_short(redact(step.reason), MAX_REASON))}"
                if shown == MAX_LISTED_STEPS or len(section) + len(line) > 2900:
                    section += f"\n… and {len(failed) - shown} more"
                    break
                section += "\n" + line
        else:
            section = f"*Reason*\n{_mrkdwn(_short(redact(run.reason), MAX_REASON))}"
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _short(section, 3000)}}
        )
    if workflow_tags:
        tags = ", ".join(_code(tag) for tag in workflow_tags)
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _short(tags, 2000)}]}
        )
    return {"text": _short(text, 3000), "blocks": blocks}
