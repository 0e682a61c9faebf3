"""``reconciler plan``: golden Markdown and JSON plans, exit codes, planning against a backend."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.app.cli import cli
from reconciler.app.reviewing import review_change
from reconciler.core.planning import DeletionPolicy
from reconciler.core.planreports import render_markdown, render_text, report_as_dict
from tests.app.gitfixtures import git
from tests.conftest import EXAMPLES_REPO

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FIXED_DATE = "2026-11-28T12:00:00+00:00"


class Checkout:
    """A repository with deterministic commit ids (fixed author, committer and dates)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(EXAMPLES_REPO, root)
        git(root, "init", "-q", "-b", "main")
        self.commit("Add the examples")

    def commit(self, message: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Reviewer",
            "GIT_AUTHOR_EMAIL": "reviewer@example.com",
            "GIT_COMMITTER_NAME": "Reviewer",
            "GIT_COMMITTER_EMAIL": "reviewer@example.com",
            "GIT_AUTHOR_DATE": FIXED_DATE,
            "GIT_COMMITTER_DATE": FIXED_DATE,
        }
        import subprocess

        subprocess.run(["git", "add", "-A"], cwd=self.root, check=True, env=env)
        subprocess.run(
            ["git", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", message],
            cwd=self.root,
            check=True,
            env=env,
        )
        return git(self.root, "rev-parse", "HEAD")

    def edit(self, relpath: str, old: str, new: str) -> None:
        path = self.root / relpath
        text = path.read_text()
        assert old in text, (relpath, old)
        path.write_text(text.replace(old, new, 1))


def make_change(checkout: Checkout) -> None:
    checkout.edit("workflows/daily-report.yaml", "cpu: 500m", "cpu: 750m")
    checkout.edit(
        "workflows/daily-report.yaml",
        "spec:\n  dag:",
        'spec:\n  schedule:\n    crons: ["0 6 * * 1-5"]\n    timezone: Europe/Berlin\n'
        "    concurrencyPolicy: Forbid\n  dag:",
    )
    (checkout.root / "workflows" / "parallel-batch-pipeline.yaml").unlink()
    text = (checkout.root / "workflows" / "projected-workflow.yaml").read_text()
    (checkout.root / "workflows" / "nightly-export.yaml").write_text(
        text.replace("name: projected-workflow", "name: nightly-export").replace(
            "type: instance", 'type: instance\n  schedule:\n    crons: ["30 1 * * *"]'
        )
    )
    (checkout.root / "workflows" / "customer-batch-pipeline.yaml").rename(
        checkout.root / "workflows" / "customers.yaml"
    )
    checkout.commit("Change the examples")


def review(checkout: Checkout, *, base: str | None = "HEAD~1", backend=None):  # type: ignore[no-untyped-def]
    return review_change(
        checkout.root,
        head="HEAD",
        base=base,
        path="",
        backend=backend,
        owner="default",
        policy=DeletionPolicy(),
        environ={},
        now=NOW,
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path / "repo")


def test_plan_markdown_golden(checkout: Checkout) -> None:
    make_change(checkout)
    report = review(checkout)
    assert report.exit_code == 2
    check_golden("plan.md", render_markdown(report))


def test_plan_text_and_json_golden(checkout: Checkout) -> None:
    make_change(checkout)
    report = review(checkout)
    check_golden("plan.txt", render_text(report))
    check_golden("plan.json", json.dumps(report_as_dict(report), indent=2) + "\n")


def test_invalid_head_exits_1_and_lists_errors(checkout: Checkout) -> None:
    checkout.edit("workflows/daily-report.yaml", "cpu: 100m", "cpu: lots")
    (checkout.root / "workflows" / "parallel-batch-pipeline.yaml").unlink()
    checkout.commit("Break one, delete one")
    report = review(checkout)
    assert report.exit_code == 1
    check_golden("plan-invalid.md", render_markdown(report))


def test_guard_shows_in_plan(checkout: Checkout) -> None:
    for name in ("daily-report", "parallel-batch-pipeline", "projected-workflow"):
        (checkout.root / "workflows" / f"{name}.yaml").unlink()
    checkout.commit("Remove three")
    report = review(checkout)
    assert [h.reason for h in report.plan.holds] == ["DeletionGuard"]
    assert "DeletionGuard" in render_markdown(report)
    checkout.commit("Allow it\n\nReconciler-Allow-Prune: true")
    report = review(checkout, base="HEAD~2")
    assert report.plan.holds == ()
    assert report.plan.summary()["delete"] == 3


def test_cli_exit_codes(checkout: Checkout) -> None:
    runner = CliRunner()
    args = ["plan", "--repo", str(checkout.root), "--base", "HEAD"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "0 to create" in result.output
    make_change(checkout)
    result = runner.invoke(cli, [*args[:-1], "HEAD~1", "--format", "json"])
    assert result.exit_code == 2
    assert json.loads(result.output)["summary"]["create"] == 1
    result = runner.invoke(cli, ["plan", "--repo", str(checkout.root), "--base", "nope"])
    assert result.exit_code == 1
    assert "revision 'nope' is not in" in result.output


def test_plan_against_applied_state(checkout: Checkout, tmp_path: Path) -> None:
    runner = CliRunner()
    state = str(tmp_path / "state")
    synced = runner.invoke(cli, ["sync", "--repo", str(checkout.root), "--state-dir", state])
    assert synced.exit_code == 0, synced.output
    make_change(checkout)
    result = runner.invoke(
        cli, ["plan", "--repo", str(checkout.root), "--state-dir", state, "--format", "json"]
    )
    assert result.exit_code == 2, result.output
    document = json.loads(result.output)
    assert document["base"] == "applied state"
    assert document["summary"] == {
        "create": 1,
        "update": 1,
        "move": 1,
        "delete": 1,
        "unchanged": 1,
        "held_delete": 0,
        "kept_invalid": 0,
    }
