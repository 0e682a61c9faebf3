"""The status branch end to end: runs of the examples reported to a real bare remote."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.runner import LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.adapters.statusbranch import StatusWriter
from reconciler.app.reporting import ReportingOptions, StatusReporter
from reconciler.app.running import Executor
from reconciler.app.syncing import Syncer, SyncOptions
from reconciler.core.names import RunId
from reconciler.core.runs import Run, new_run
from reconciler.ports import TransientError
from tests.app.gitfixtures import Remote, git
from tests.conftest import EXAMPLES_REPO

CANARY = "canary-9d7c0f-supersecret-token"


class World:
    def __init__(self, root: Path, *, keep_succeeded: int = 20) -> None:
        self.root = root
        self.remote = Remote(root)
        self.state = root / "state"
        self.clock = SystemClock()
        self.store = LocalStore(self.state, clock=self.clock)
        self.secrets = SecretStore(self.state)
        self.runner = LocalStepRunner(self.state, secrets=self.secrets, clock=self.clock)
        self.executor = Executor(self.store, self.runner, clock=self.clock)
        self.syncer = Syncer(
            GitSource(self.remote.url, cache_dir=self.state / "git"),
            self.store,
            clock=self.clock,
            options=SyncOptions(owner="default"),
            sleep=time.sleep,
        )
        self.keep_succeeded = keep_succeeded
        self.reporter = self.new_reporter()

    def new_reporter(self) -> StatusReporter:
        writer = StatusWriter(
            self.remote.url,
            source_branch="main",
            cache_dir=self.state / "git",
            sleep=lambda _: None,
        )
        return StatusReporter(
            self.store,
            writer,
            clock=self.clock,
            read_log=self.runner.read_log,
            secret_values=lambda: [
                v for i in self.secrets.list() for v in self.secrets.get(i).values()
            ],
            options=ReportingOptions(keep_succeeded=self.keep_succeeded),
        )

    def run(self, name: str) -> Run:
        workflow = self.store.get_workflow(f"public/{name}")  # type: ignore[arg-type]
        assert workflow is not None
        run = new_run(
            workspace="public",
            run_id=RunId(f"{name}-m{len(self.store.runs_of(workflow.key)):012d}"),
            name=name,
            trigger="manual",
            requested_by="tester",
            revision=workflow.revision,
            spec=workflow.spec,
            spec_hash=workflow.spec_hash,
            now=self.clock.now(),
        )
        self.store.create_runs([run])
        self.executor.notify()
        while (current := self.store.get_run("public", run.run_id)) is not None and current.active:
            self.executor.step(wait=0.1)
        assert current is not None
        return current

    def branch_files(self, branch: str = "status") -> list[str]:
        out = git(self.remote.bare, "ls-tree", "-r", "--name-only", branch)
        return out.splitlines()

    def show(self, path: str, branch: str = "status") -> str:
        return git(self.remote.bare, "show", f"{branch}:{path}")


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    text = (EXAMPLES_REPO / "workflows" / "projected-workflow.yaml").read_text()
    world.remote.copy_examples()
    # a variant that prints its secret: the canary must be scrubbed everywhere
    world.remote.write(
        "workflows/leaky.yaml",
        text.replace("name: projected-workflow", "name: leaky").replace(
            'test -n "$API_TOKEN"', 'echo "token is $API_TOKEN"'
        ),
    )
    world.remote.commit("Add a leaky workflow")
    assert world.syncer.sync().result == "succeeded"
    world.secrets.set("workflow-secret", {"API_TOKEN": CANARY})
    return world


def test_branch_layout_after_runs(world: World) -> None:
    main_before = git(world.remote.bare, "rev-parse", "main")
    runs = [world.run(name) for name in ("customer-batch-pipeline", "daily-report", "leaky")]
    assert all(r.state == "succeeded" for r in runs)
    flushed = world.reporter.flush()
    assert flushed is not None
    assert flushed.runs == 3
    files = set(world.branch_files())
    for run in runs:
        base = f"workflows/public/{run.name}"
        assert f"{base}/runs/{run.run_id}.json" in files
        assert f"{base}/runs/{run.run_id}.md" in files
    for name in (
        "customer-batch-pipeline",
        "daily-report",
        "parallel-batch-pipeline",
        "projected-workflow",
        "leaky",
    ):
        assert f"workflows/public/{name}/status.json" in files
    assert {"README.md", "sync.json"} <= files
    report = json.loads(
        world.show(f"workflows/public/customer-batch-pipeline/runs/{runs[0].run_id}.json")
    )
    assert [s["name"] for s in report["steps"]] == ["extract", "validate", "publish"]
    assert report["steps"][1]["log_tail"] == "validation passed"
    assert report["trigger"]["kind"] == "manual"
    status = json.loads(world.show("workflows/public/daily-report/status.json"))
    assert status["last_runs"][0]["run"] == runs[1].run_id
    assert json.loads(world.show("sync.json"))["result"] == "succeeded"
    tokens = MarkdownIt("commonmark").enable("table").parse(world.show("README.md"))
    assert len([t for t in tokens if t.type == "tr_open"]) == 1 + 5
    assert git(world.remote.bare, "rev-parse", "main") == main_before
    message = git(world.remote.bare, "log", "-1", "--format=%B", "status")
    assert message == "status: 3 run reports, sync succeeded [skip ci]"
    merge_base = subprocess.run(
        ["git", "merge-base", "main", "status"], cwd=world.remote.bare, capture_output=True
    )
    assert merge_base.returncode == 1  # an orphan branch
    assert world.reporter.flush() is None  # nothing new: no commit


def test_no_secret_byte_reaches_git(world: World) -> None:
    leaky = world.run("leaky")
    assert leaky.state == "succeeded"
    assert world.reporter.flush() is not None
    log = world.show(f"workflows/public/leaky/runs/{leaky.run_id}.json")
    assert "token is [REDACTED]" in log
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        cwd=world.remote.bare,
        capture_output=True,
        check=True,
    ).stdout
    assert CANARY.encode() not in objects
    for path in world.state.rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            assert CANARY.encode() not in path.read_bytes(), path


def test_failed_push_keeps_the_batch_across_a_restart(world: World) -> None:
    run = world.run("daily-report")
    hidden = world.root / "hidden.git"
    world.remote.bare.rename(hidden)
    with pytest.raises(TransientError):
        world.reporter.flush()
    hidden.rename(world.remote.bare)
    restarted = world.new_reporter()  # a new daemon: only the durable marks remain
    flushed = restarted.flush()
    assert flushed is not None
    assert flushed.runs == 1
    assert f"workflows/public/daily-report/runs/{run.run_id}.json" in world.branch_files()


def test_concurrent_writer_loses_nothing(world: World) -> None:
    first = world.run("daily-report")
    world.reporter.flush()
    other = world.root / "other"
    git(world.root, "clone", "-q", "-b", "status", str(world.remote.bare), str(other))
    (other / "notes.md").write_text("written by someone else\n")
    git(other, "add", "notes.md")
    git(other, "-c", "user.name=o", "-c", "user.email=o@x", "commit", "-qm", "notes")
    git(other, "push", "-q", "origin", "status")
    second = world.run("daily-report")
    world.reporter.flush()
    files = world.branch_files()
    assert "notes.md" in files
    for run in (first, second):
        assert f"workflows/public/daily-report/runs/{run.run_id}.json" in files


def test_retention_removes_old_reports(tmp_path: Path) -> None:
    world = World(tmp_path, keep_succeeded=2)
    world.remote.copy_examples()
    world.syncer.sync()
    runs = []
    for _ in range(4):
        runs.append(world.run("daily-report"))
        world.reporter.flush()
    reports = sorted(
        p
        for p in world.branch_files()
        if p.startswith("workflows/public/daily-report/runs/") and p.endswith(".json")
    )
    assert reports == sorted(
        f"workflows/public/daily-report/runs/{r.run_id}.json" for r in runs[-2:]
    )


def test_broken_manifest_on_main_shows_in_sync_json(world: World) -> None:
    world.remote.write("workflows/broken.yaml", "version: v2alpha\nname: Broken\ntype: workflow\n")
    world.remote.commit("Break something")
    assert world.syncer.sync().result == "failed"
    assert world.reporter.flush() is not None
    sync = json.loads(world.show("sync.json"))
    assert sync["result"] == "failed"
    assert {e["path"] for e in sync["errors"]} == {"workflows/broken.yaml"}
    assert sync["source"]["message"] == "Break something"
    assert "sync.json" in world.show("README.md")
