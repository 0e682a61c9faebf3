"""Notification rules, kinds, selection and payloads (pure)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.core.loading import load_repo_config
from reconciler.core.names import Revision, RunId
from reconciler.core.notifications import (
    NotificationRule,
    format_duration,
    generic_payload,
    kinds_for,
    previous_outcome,
    select,
    slack_payload,
    unknown_targets,
)
from reconciler.core.redaction import MASK, Redactor
from reconciler.core.runs import (
    Run,
    new_run,
    request_cancel,
    skipped_run,
    start_run,
    step_finished,
    step_started,
)

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
SPEC = {
    "spec": {
        "dag": [
            {"name": "extract", "depends": []},
            {"name": "publish", "depends": ["extract"]},
        ]
    }
}
SECRET = "xoxb-1234567890-abcdefghijkl"


def started(run_id: str = "daily-report-1", *, workspace: str = "public") -> Run:
    run = new_run(
        workspace=workspace,
        run_id=RunId(run_id),
        name="daily-report",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("0123456789abcdef0123"),
        spec=SPEC,
        spec_hash="h",
        now=T0,
        slot=T0,
    )
    return start_run(run, now=T0)


def succeeded(run_id: str = "daily-report-1", *, at: datetime = T0) -> Run:
    run = started(run_id)
    for step in ("extract", "publish"):
        run = step_started(run, step, now=at)
        run = step_finished(run, step, exit_code=0, now=at + timedelta(seconds=30))
    return run


def failed(run_id: str = "daily-report-1", *, reason: str = "", at: datetime = T0) -> Run:
    run = step_started(started(run_id), "extract", now=at)
    return step_finished(run, "extract", exit_code=3, now=at + timedelta(seconds=83), reason=reason)


def rule(**fields: Any) -> NotificationRule:
    return NotificationRule.model_validate({"target": "slack", **fields})


# --------------------------------------------------------------------------- kinds


def test_failure_success_and_recovery() -> None:
    assert failed().state == "failed"
    assert kinds_for(failed(), None) == {"failure"}
    assert kinds_for(succeeded(), None) == {"success"}
    assert kinds_for(succeeded("b"), succeeded("a")) == {"success"}
    assert kinds_for(succeeded("b"), failed("a")) == {"success", "recovery"}
    assert kinds_for(failed("b"), failed("a")) == {"failure"}


def test_recovery_needs_another_run_of_the_same_workflow() -> None:
    other = replace(failed("a"), workspace="finance")
    assert kinds_for(succeeded("b"), other) == {"success"}
    assert kinds_for(succeeded("a"), failed("a")) == {"success"}


def test_cancelled_skipped_and_unfinished_runs_notify_nothing() -> None:
    cancelled = request_cancel(started(), now=T0, reason="asked")
    assert cancelled.state == "cancelled"
    assert kinds_for(cancelled, failed("a")) == set()
    assert kinds_for(skipped_run(started(), reason="Forbid"), None) == set()
    assert kinds_for(started(), None) == set()


def test_previous_outcome_passes_over_cancelled_and_skipped_runs() -> None:
    current = succeeded("d", at=T0 + timedelta(hours=3))
    earlier_failure = failed("a", at=T0)
    cancelled = request_cancel(started("b"), now=T0 + timedelta(hours=1), reason="x")
    skipped = skipped_run(started("c"), reason="Forbid")
    later = succeeded("e", at=T0 + timedelta(hours=5))
    history = [later, cancelled, earlier_failure, skipped, current]
    assert previous_outcome(current, history) is earlier_failure
    assert previous_outcome(current, [current, later]) is None
    assert previous_outcome(current, []) is None


# --------------------------------------------------------------------------- selection


def pick(rules: list[NotificationRule], kinds: set[str], **where: Any) -> list[Any]:
    params: dict[str, Any] = {"workspace": "public", "name": "daily-report", "tags": ()}
    params.update(where)
    return select(rules, kinds=kinds, **params)


def test_a_rule_without_filters_matches_every_workflow_on_failure_by_default() -> None:
    rules = [rule()]
    assert rules[0].on == ("failure",)
    assert pick(rules, {"failure"}) == [("slack", "failure")]
    assert pick(rules, {"success"}) == []
    assert pick(rules, set()) == []


def test_success_only_when_asked() -> None:
    assert pick([rule(on=["success"])], {"success"}) == [("slack", "success")]
    assert pick([rule(on=["failure", "recovery"])], {"success"}) == []


def test_selection_by_name_glob_workspace_glob_and_tag() -> None:
    by_name = rule(workflows=["daily-*"])
    by_key = rule(workflows=["finance/*"])
    by_tag = rule(tags=["team:data", "critical"])
    assert pick([by_name], {"failure"}) == [("slack", "failure")]
    assert pick([by_name], {"failure"}, name="weekly") == []
    assert pick([by_key], {"failure"}) == []
    assert pick([by_key], {"failure"}, workspace="finance") == [("slack", "failure")]
    assert pick([by_tag], {"failure"}, tags=["critical"]) == [("slack", "failure")]
    assert pick([by_tag], {"failure"}, tags=["other"]) == []
    both = rule(workflows=["daily-*"], tags=["critical"])
    assert pick([both], {"failure"}, tags=["critical"]) == [("slack", "failure")]
    assert pick([both], {"failure"}, tags=[]) == []
    assert pick([both], {"failure"}, name="weekly", tags=["critical"]) == []


def test_each_target_once_with_the_first_kind_in_order() -> None:
    rules = [
        rule(on=["success"]),
        rule(target="pager", on=["failure"]),
        rule(on=["recovery"]),
        rule(target="email", on=["success", "recovery"]),
    ]
    kinds = {"success", "recovery"}
    assert pick(rules, kinds) == [("slack", "recovery"), ("email", "recovery")]
    assert pick(rules, {"failure"}) == [("pager", "failure")]


def test_unknown_targets_in_first_mention_order() -> None:
    rules = [rule(target="b"), rule(target="a"), rule(target="b"), rule(target="known")]
    assert unknown_targets(rules, ["known"]) == ["b", "a"]


def test_rule_model_is_strict() -> None:
    with pytest.raises(ValidationError):
        rule(on=["failed"])
    with pytest.raises(ValidationError):
        rule(on=[])
    with pytest.raises(ValidationError):
        rule(workflow=["x"])
    with pytest.raises(ValidationError):
        NotificationRule.model_validate({"on": ["failure"]})
    assert rule(on="success").on == ("success",)


# --------------------------------------------------------------------------- repo config

CONFIG = b"""\
version: v1
notifications:
  - target: team-slack
    on: [failure, recovery]
    workflows: ["daily-*", "finance/*"]
  - target: audit
    on: [success]
    tags: [critical]
  - target: everything
"""


def test_a_notifications_block_loads() -> None:
    config, problems = load_repo_config(CONFIG)
    assert problems == ()
    first, second, third = config.notifications
    assert (first.target, first.on, first.workflows) == (
        "team-slack",
        ("failure", "recovery"),
        ("daily-*", "finance/*"),
    )
    assert (second.on, second.tags) == (("success",), ("critical",))
    assert (third.on, third.workflows, third.tags) == (("failure",), (), ())


def test_an_empty_notifications_key_is_unset() -> None:
    config, problems = load_repo_config(b"version: v1\nnotifications:\n")
    assert problems == ()
    assert config.notifications == ()


def test_an_unknown_kind_is_an_error_with_line_and_field() -> None:
    text = CONFIG.replace(b"on: [success]", b"on: [success, finished]")
    config, problems = load_repo_config(text)
    assert config.notifications == ()
    (problem,) = problems
    assert (problem.path, problem.line, problem.field) == (
        ".reconciler.yaml",
        7,
        "notifications[1].on[1]",
    )
    assert "'failure', 'success' or 'recovery'" in problem.message


def test_an_unknown_rule_field_is_an_error_with_a_suggestion() -> None:
    text = CONFIG.replace(b"    tags: [critical]", b"    tag: [critical]")
    _, problems = load_repo_config(text)
    (problem,) = problems
    assert (problem.line, problem.field) == (8, "notifications[1].tag")
    assert "did you mean 'tags'" in problem.message


def test_a_missing_target_is_an_error() -> None:
    _, problems = load_repo_config(b"notifications:\n  - on: [failure]\n")
    (problem,) = problems
    assert (problem.line, problem.field, problem.message) == (
        2,
        "notifications[0].target",
        "required field is missing",
    )


# --------------------------------------------------------------------------- payloads


def test_generic_payload_fields() -> None:
    run = failed(reason=f"token {SECRET} rejected")
    payload = generic_payload(run, "failure", workflow_tags=["critical"], redact=Redactor())
    json.dumps(payload)  # plain JSON
    assert payload["kind"] == "failure"
    assert (payload["workspace"], payload["workflow"], payload["run_id"]) == (
        "public",
        "daily-report",
        "daily-report-1",
    )
    assert (payload["trigger"], payload["state"]) == ("schedule", "failed")
    assert payload["tags"] == ["critical"]
    assert payload["started_at"] == T0.isoformat()
    assert payload["finished_at"] == (T0 + timedelta(seconds=83)).isoformat()
    assert payload["duration_seconds"] == 83.0
    assert payload["reason"] == "step(s) failed: extract"
    assert payload["steps"] == [
        {"name": "extract", "state": "failed", "exit_code": 3, "reason": f"token {MASK} rejected"},
        {
            "name": "publish",
            "state": "skipped",
            "exit_code": None,
            "reason": "upstream step 'extract' failed",
        },
    ]
    assert "public/daily-report failed" in payload["text"]
    assert "1m 23s" in payload["text"]
    assert SECRET not in json.dumps(payload)


def test_slack_payload_shape() -> None:
    run = failed(reason=f"<!channel> token {SECRET} rejected")
    payload = slack_payload(run, "failure", workflow_tags=["critical"], redact=Redactor())
    assert set(payload) == {"text", "blocks"}
    assert "public/daily-report failed" in payload["text"]
    header, facts, failures, context = payload["blocks"]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150
    assert facts["type"] == "section"
    assert any("daily-report-1" in field["text"] for field in facts["fields"])
    assert failures["type"] == "section"
    text = failures["text"]["text"]
    assert "*Failed steps*" in text
    assert "`extract`" in text
    assert MASK in text
    assert "<!channel>" not in text  # escaped: a reason cannot ping a channel
    assert "&lt;!channel&gt;" in text
    assert "publish" not in text  # skipped, not failed
    assert context["type"] == "context"
    assert SECRET not in json.dumps(payload)


def test_slack_payload_of_a_recovery_lists_no_failures() -> None:
    payload = slack_payload(succeeded(), "recovery", redact=lambda s: s)
    assert "recovered" in payload["text"]
    assert [block["type"] for block in payload["blocks"]] == ["header", "section"]


def test_slack_payload_caps_long_lists() -> None:
    dag = [{"name": f"s{i}", "depends": []} for i in range(15)]
    run = new_run(
        workspace="public",
        run_id=RunId("wide-1"),
        name="wide",
        trigger="manual",
        requested_by="alice",
        revision=Revision("r"),
        spec={"spec": {"dag": dag}},
        spec_hash="h",
        now=T0,
    )
    run = start_run(run, now=T0)
    for step in run.steps:
        run = step_started(run, step.name, now=T0)
    for step in run.steps:
        run = step_finished(run, step.name, exit_code=1, now=T0, reason="x" * 5000)
    payload = slack_payload(run, "failure", redact=lambda s: s)
    text = payload["blocks"][2]["text"]["text"]
    assert len(text) <= 3000
    assert "more" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (83.4, "1m 23s"), (3723, "1h 2m 3s")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
