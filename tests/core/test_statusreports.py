"""Status branch content: run reports, dashboards, retention and redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from markdown_it import MarkdownIt

from reconciler.core.names import Revision, RunId, WorkflowKey
from reconciler.core.redaction import MASK, Redactor
from reconciler.core.runs import Run, new_run, start_run, step_finished, step_started
from reconciler.core.statusreports import (
    WorkflowSummary,
    keep_run_ids,
    log_tail,
    render_dashboard,
    render_run,
    run_paths,
)
from reconciler.core.workflows import AppliedWorkflow

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
SPEC = {
    "spec": {
        "schedule": {"crons": ["0 2 * * *"], "timezone": "UTC", "concurrencyPolicy": "Allow"},
        "dag": [
            {
                "name": "extract",
                "depends": [],
                "spec": {"stack": "container", "stackSpec": {"image": "alpine:3.20"}},
            },
            {
                "name": "publish",
                "depends": ["extract"],
                "spec": {"stack": "container", "stackSpec": {"image": "alpine:3.20"}},
            },
        ],
    }
}


def finished_run(run_id: str, *, fail: bool = False, at: datetime = T0) -> Run:
    run = new_run(
        workspace="public",
        run_id=RunId(run_id),
        name="nightly",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("abc123"),
        spec=SPEC,
        spec_hash="h",
        now=at,
        slot=at,
    )
    run = start_run(run, now=at)
    run = step_finished(
        step_started(run, "extract", now=at), "extract", exit_code=0, now=at + timedelta(seconds=2)
    )
    code = 4 if fail else 0
    return step_finished(
        step_started(run, "publish", now=at),
        "publish",
        exit_code=code,
        now=at + timedelta(seconds=5),
    )


def test_run_report_json_and_markdown() -> None:
    run = finished_run("nightly-20261128t0200z", fail=True)
    files = render_run(run, log_tails={"publish": "copying\nerror: disk full"}, redact=Redactor())
    json_path, md_path = run_paths(run)
    assert json_path == "workflows/public/nightly/runs/nightly-20261128t0200z.json"
    document = json.loads(files[json_path])
    assert document["trigger"] == {
        "kind": "schedule",
        "slot": "2026-11-28T02:00:00+00:00",
        "requested_by": "scheduler",
    }
    assert document["revision"] == "abc123"
    assert [(s["name"], s["state"], s["exit_code"]) for s in document["steps"]] == [
        ("extract", "succeeded", 0),
        ("publish", "failed", 4),
    ]
    assert document["steps"][1]["log_tail"].endswith("error: disk full")
    markdown = files[md_path].decode()
    assert "```mermaid" in markdown
    assert "class s_publish failed" in markdown
    assert "class s_extract succeeded" in markdown


def test_dashboard_is_markdown_with_a_row_per_workflow() -> None:
    workflow = AppliedWorkflow(
        key=WorkflowKey("public/nightly"),
        workspace="public",
        name="nightly",
        spec=SPEC,
        spec_hash="h",
        source="git",
        path="w.yaml",
        revision=Revision("abc123"),
        owner="default",
        state="active",
        suspended=False,
        created_at=T0,
        updated_at=T0,
    )
    summary = WorkflowSummary(
        workflow, [finished_run("nightly-20261128t0200z")], T0 + timedelta(days=1)
    )
    text = render_dashboard([summary], last_sync=None, now=T0).decode()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    rows = [t for t in tokens if t.type == "tr_open"]
    assert len(rows) == 2  # header + one workflow
    inline = " ".join(t.content for t in tokens if t.type == "inline")
    assert (
        "[`nightly-20261128t0200z`](workflows/public/nightly/runs/nightly-20261128t0200z.md)"
        in inline
    )
    assert "2026-11-29 02:00 UTC" in inline


def test_retention_keeps_newest_per_result() -> None:
    runs = [finished_run(f"r{i}", fail=i % 3 == 0) for i in range(10, 0, -1)]  # newest first
    kept = keep_run_ids(runs, succeeded=2, failed=1)
    assert kept == {"r10", "r8", "r9"}


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        pytest.param("token=s3cr3t-value!", ["s3cr3t-value"], f"token={MASK}!", id="known-value"),
        pytest.param("abc", ["abc"], "abc", id="too-short-to-mask"),
        pytest.param("ghp_" + "a" * 36, [], MASK, id="github-token"),
        pytest.param("glpat-" + "b" * 20, [], MASK, id="gitlab-token"),
        pytest.param("AKIAABCDEFGHIJKLMNOP", [], MASK, id="aws-key"),
        pytest.param(
            "Authorization: Bearer abcdefghijklmnopqrstu",
            [],
            f"Authorization: Bearer {MASK}",
            id="bearer",
        ),
        pytest.param(
            "https://user:hunter22@git.example.com/x",
            [],
            f"https://{MASK}@git.example.com/x",
            id="url-password",
        ),
        pytest.param("nothing secret here", ["other"], "nothing secret here", id="clean"),
    ],
)
def test_redaction(text: str, secrets: list[str], expected: str) -> None:
    assert Redactor(secrets)(text) == expected


def test_log_tail_keeps_the_end() -> None:
    data = "\n".join(f"line {i}" for i in range(1000)).encode()
    tail = log_tail(data, lines=3)
    assert tail == "line 997\nline 998\nline 999"
