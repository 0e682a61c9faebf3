"""The lifecycle commands as an operator and a script use them: machine output, completion,
progress while waiting, and errors that say what to do next (local backend, real state)."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from reconciler.app.cli import cli
from reconciler.app.completion import COMPLETE_VAR, complete_workflow_names
from reconciler.app.lifecycle import WaitProgress, describe_progress, iso
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import (
    Run,
    new_run,
    request_cancel,
    start_run,
    step_finished,
    step_started,
    wait_run,
)
from tests.app.test_runs_e2e import invoke
from tests.conftest import EXAMPLES_REPO

CANARY = "canary-7d3e-never-printed"
NIGHTLY = (
    (EXAMPLES_REPO / "workflows" / "daily-report.yaml")
    .read_text()
    .replace("name: daily-report", "name: nightly-report", 1)
    .replace(
        "spec:\n  dag:",
        'spec:\n  schedule:\n    crons: ["30 2 * * *"]\n    timezone: America/New_York\n  dag:',
        1,
    )
)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples plus a scheduled workflow, applied; two runs done; one secret set."""
    root = tmp_path_factory.mktemp("lifecycle")
    repo = root / "repo"
    shutil.copytree(EXAMPLES_REPO, repo)
    (repo / "workflows" / "nightly-report.yaml").write_text(NIGHTLY)
    state = root / "state"
    code, out, err = invoke("sync", "--repo", str(repo), "--state-dir", str(state))
    assert code == 0, (out, err)
    for name in ("daily-report", "customer-batch-pipeline"):
        code, out, err = invoke("run", "-n", name, "--wait", "--state-dir", str(state))
        assert code == 0, (out, err)
    code, _, err = invoke("secret", "set", "db", f"PASSWORD={CANARY}", "--state-dir", str(state))
    assert code == 0, err
    return state


def machine(state: Path, output: str, *args: str) -> Any:
    code, out, err = invoke(*args, "-o", output, "--state-dir", str(state))
    assert code == 0, err
    return json.loads(out) if output == "json" else yaml.safe_load(out)


def is_utc(value: str) -> bool:
    """ISO 8601, UTC, milliseconds, Z: what every machine time looks like."""
    parsed = datetime.fromisoformat(value)
    return value.endswith("Z") and parsed.utcoffset() is not None and len(value) == 24


# -- machine output --------------------------------------------------------------------------

WORKFLOW_KEYS = {
    "workspace",
    "name",
    "state",
    "suspended",
    "last_run",
    "result",
    "next_run",
    "revision",
    "path",
    "source",
    "owner",
    "updated_at",
}
RUN_KEYS = {
    "workflow",
    "workspace",
    "run",
    "state",
    "trigger",
    "requested_by",
    "slot",
    "revision",
    "created_at",
    "started_at",
    "finished_at",
    "reason",
    "duration_seconds",
    "cancel_requested",
    "steps",
}
STEP_KEYS = {
    "name",
    "depends",
    "state",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "duration_seconds",
    "image",
}


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_machine_output(state: Path, output: str) -> None:
    document = machine(state, output, "get", "-a")
    assert set(document) == {"workflows", "last_sync"}
    assert set(document["last_sync"]) == {
        "revision",
        "result",
        "started_at",
        "finished_at",
        "message",
    }
    assert is_utc(document["last_sync"]["finished_at"])
    workflows = {w["name"]: w for w in document["workflows"]}
    assert len(workflows) == 5
    for w in workflows.values():
        assert set(w) == WORKFLOW_KEYS
        assert is_utc(w["updated_at"])
    assert is_utc(workflows["nightly-report"]["next_run"])
    assert workflows["nightly-report"]["next_run"].endswith(":30:00.000Z")
    assert workflows["daily-report"]["next_run"] is None
    detail = machine(state, output, "get", "-n", "daily-report", "-d")["workflows"][0]
    assert set(detail) == WORKFLOW_KEYS | {"spec", "images", "recent_runs"}
    assert set(detail["recent_runs"][0]) == {
        "run",
        "state",
        "trigger",
        "reason",
        "created_at",
        "finished_at",
    }


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_runtime_get_machine_output(state: Path, output: str) -> None:
    run = machine(state, output, "runtime", "get", "-n", "customer-batch-pipeline")
    assert set(run) == RUN_KEYS
    assert run["workflow"] == "public/customer-batch-pipeline"
    assert run["state"] == "succeeded"
    assert all(is_utc(run[k]) for k in ("created_at", "started_at", "finished_at"))
    assert isinstance(run["duration_seconds"], float)
    for step in run["steps"]:
        assert set(step) == STEP_KEYS
        assert is_utc(step["started_at"])
        assert is_utc(step["finished_at"])
    assert [s["name"] for s in run["steps"]] == ["extract", "validate", "publish"]
    # fixed-width times sort as strings
    assert run["steps"][0]["finished_at"] <= run["steps"][1]["started_at"]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_events_machine_output(state: Path, output: str) -> None:
    events = machine(state, output, "events", "-n", "daily-report")
    assert isinstance(events, list)
    assert events
    for event in events:
        assert set(event) == {"at", "workflow", "run", "kind", "message"}
        assert is_utc(event["at"])
    assert events[0]["kind"] == "RunSucceeded"  # newest first


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_next_runs_machine_output(state: Path, output: str) -> None:
    document = machine(
        state,
        output,
        "next-runs",
        "-n",
        "nightly-report",
        "--from",
        "2026-03-07T00:00:00-05:00",
        "--count",
        "2",
    )
    assert document == {
        "workflow": "public/nightly-report",
        "timezone": "America/New_York",
        "crons": ["30 2 * * *"],
        "from": "2026-03-07T05:00:00.000Z",
        "next_runs": ["2026-03-07T02:30:00-05:00", "2026-03-08T03:30:00-04:00"],
        "next_runs_utc": ["2026-03-07T07:30:00.000Z", "2026-03-08T07:30:00.000Z"],
    }


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_secret_list_shows_ids_and_key_names_never_values(state: Path, output: str) -> None:
    code, out, err = invoke("secret", "list", "-o", output, "--state-dir", str(state))
    assert code == 0, err
    assert CANARY not in out + err
    document = json.loads(out) if output == "json" else yaml.safe_load(out)
    assert document == {"secrets": [{"id": "db", "keys": ["PASSWORD"]}]}
    code, out, err = invoke("secret", "list", "--state-dir", str(state))
    assert out == "db: PASSWORD\n"
    assert CANARY not in out + err


def test_iso_is_utc_with_milliseconds() -> None:
    assert iso(datetime(2026, 3, 8, 3, 30, tzinfo=UTC)) == "2026-03-08T03:30:00.000Z"
    assert iso(datetime.fromisoformat("2026-03-08T03:30:00.123456-04:00")) == (
        "2026-03-08T07:30:00.123Z"
    )
    assert iso(None) is None


# -- completion ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    code, out, err = invoke("completion", shell)
    assert code == 0, err
    assert COMPLETE_VAR in out
    assert "_RECONCILER_COMPLETE" in out
    assert len(out.splitlines()) > 5


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash would offer for the last word of ``words``."""
    result = CliRunner().invoke(
        cli,
        [],
        prog_name="reconciler",
        env={
            COMPLETE_VAR: "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
            **(env or {}),
        },
    )
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_names_complete_from_the_store(state: Path) -> None:
    sd = f"--state-dir {state}"
    assert complete(f"reconciler get {sd} -n ")[:2] == ["customer-batch-pipeline", "daily-report"]
    assert complete(f"reconciler run {sd} -n da") == ["daily-report"]
    assert complete(f"reconciler runtime get {sd} -n n") == ["nightly-report"]
    assert complete(f"reconciler get {sd} -w nowhere -n ") == []
    assert complete("reconciler events -n cu", {"RECONCILER_STATE_DIR": str(state)}) == [
        "customer-batch-pipeline"
    ]
    runs = complete(f"reconciler runtime get {sd} -n daily-report --run ")
    assert len(runs) == 1
    assert runs[0].startswith("daily-report-m")
    steps = complete(f"reconciler log {sd} -n customer-batch-pipeline --container ")
    assert steps == ["extract", "validate", "publish"]


def call_completer(params: dict[str, Any], incomplete: str = "") -> list[str]:
    command = click.Command("x")
    ctx = click.Context(command)
    ctx.params = {"workspace": "public", **params}
    option = click.Option(["-n", "--name"])
    return [item.value for item in complete_workflow_names(ctx, option, incomplete)]


def test_name_completion_never_fails_loudly(tmp_path: Path, state: Path) -> None:
    assert call_completer({"state_dir": state}, "daily") == ["daily-report"]
    # no state directory: nothing offered, and nothing created
    missing = tmp_path / "missing"
    assert call_completer({"state_dir": missing}) == []
    assert not missing.exists()
    # a state database that cannot be opened
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.db").write_bytes(b"this is not sqlite" * 100)
    assert call_completer({"state_dir": broken}) == []
    # settings that do not even resolve, and a cluster that cannot be reached
    assert call_completer({"config_file": tmp_path / "nope.yaml"}) == []
    assert call_completer({"backend": "kubernetes", "kubeconfig": tmp_path / "nope"}) == []
    assert complete(f"reconciler get --state-dir {broken} -n ") == []


# -- progress while waiting ------------------------------------------------------------------

SPEC = {
    "spec": {
        "dag": [
            {"name": "extract"},
            {"name": "validate", "depends": ["extract"]},
            {"name": "publish", "depends": ["validate"]},
        ]
    }
}
T0 = datetime(2026, 3, 8, tzinfo=UTC)


def a_run() -> Run:
    return new_run(
        workspace="public",
        run_id=RunId("pipeline-m000000000001"),
        name="pipeline",
        trigger="manual",
        requested_by="me@host",
        revision=Revision("abc"),
        spec=SPEC,
        spec_hash="h",
        now=T0,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_prints_changes_and_a_heartbeat() -> None:
    buffer = io.StringIO()
    clock = FakeClock()
    run = a_run()
    with WaitProgress(Console(file=buffer, width=200), every=15, clock=clock) as progress:
        assert not progress.live
        progress.update(run)
        run = step_started(start_run(run, now=T0), "extract", now=T0)
        clock.now += 3
        progress.update(run)
        clock.now += 5
        progress.update(run)  # unchanged, too soon: nothing
        clock.now += 15
        progress.update(run)  # unchanged, but a heartbeat is due
        run = step_finished(run, "extract", exit_code=0, now=T0)
        run = step_started(run, "validate", now=T0)
        progress.update(run)
    assert buffer.getvalue().splitlines() == [
        "[0s] run pipeline-m000000000001: pending",
        "[3s] run pipeline-m000000000001: running extract (0/3 steps done)",
        "[23s] run pipeline-m000000000001: running extract (0/3 steps done)",
        "[23s] run pipeline-m000000000001: running validate (1/3 steps done)",
    ]


def test_progress_on_a_terminal_is_a_spinner_that_goes_away() -> None:
    buffer = io.StringIO()
    clock = FakeClock()
    console = Console(file=buffer, force_terminal=True, width=120)
    run = step_started(start_run(a_run(), now=T0), "extract", now=T0)
    with WaitProgress(console, clock=clock) as progress:
        assert progress.live
        clock.now += 65
        progress.update(run)
        assert progress._status is not None
        console.print("")  # let the live display render once
    assert "running extract (0/3 steps done) · 1m05s" in buffer.getvalue()
    assert progress._status is None


def test_describe_progress_names_waits_and_cancels() -> None:
    run = a_run()
    assert describe_progress(run) == "pending"
    assert describe_progress(wait_run(run, reason="waiting: volume 'x'")) == (
        "pending (waiting: volume 'x')"
    )
    running = step_started(start_run(run, now=T0), "extract", now=T0)
    cancelling = request_cancel(running, now=T0, reason="by me")
    assert describe_progress(cancelling) == "running extract (0/3 steps done, cancelling)"


def test_run_wait_off_a_terminal_prints_plain_progress(state: Path) -> None:
    code, out, err = invoke(
        "run", "-n", "customer-batch-pipeline", "--wait", "--state-dir", str(state)
    )
    assert code == 0, err
    assert "steps done)" in err
    assert "\x1b[" not in err  # no spinner, no cursor movement in a log
    assert out.strip().startswith("customer-batch-pipeline-m")


# -- errors say what to do next --------------------------------------------------------------


def error_of(*args: str) -> str:
    code, _, err = invoke(*args)
    assert code != 0
    return " ".join(err.split())  # unwrapped


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (  # an unknown workflow: the close match, the known ones, how to list them all
            ["runtime", "get", "-n", "daily-reprot"],
            ["did you mean 'daily-report'", "Known in public:", "reconciler get -a"],
        ),
        (["get", "-n", "nightly-report", "-w", "sales"], ["it is in workspace public: add -w"]),
        (  # an unknown run: the recent runs, and where to see more
            ["runtime", "get", "-n", "daily-report", "--run", "daily-report-mffffffffffff"],
            ["Its recent runs: daily-report-m", "(succeeded)", "reconciler get -n daily-report -d"],
        ),
        (  # a run of another workflow: the command that shows it
            ["log", "-n", "nightly-report", "--run", "RUN_OF_DAILY"],
            ["belongs to workflow 'daily-report'", "reconciler runtime get -n daily-report --run"],
        ),
        (  # an unknown step: the steps there are
            ["log", "-n", "customer-batch-pipeline", "--container", "validat"],
            [
                "has no step 'validat' (did you mean 'validate'?)",
                "its steps: extract, validate, publish",
                "Leave out --container",
            ],
        ),
        (["runtime", "get", "-n", "nightly-report"], ["reconciler run -n nightly-report --wait"]),
        (["cancel", "-n", "daily-report"], ["is succeeded", "reconciler suspend -n daily-report"]),
        (["next-runs", "-n", "daily-report"], ["on demand only", "reconciler run -n daily-report"]),
        (["next-runs"], ["-n NAME", "--file FILE", "reconciler next-runs -n"]),
        (["secret", "delete", "nope"], ["existing secrets: db", "reconciler secret list"]),
        (["secret", "set", "db", "KEY=@/nonexistent/file"], ["cannot read", "/nonexistent/file"]),
    ],
)
def test_errors_name_the_fix(state: Path, args: list[str], expected: list[str]) -> None:
    if "RUN_OF_DAILY" in args:
        run_id = machine(state, "json", "runtime", "get", "-n", "daily-report")["run"]
        args = [run_id if a == "RUN_OF_DAILY" else a for a in args]
    message = error_of(*args, "--state-dir", str(state))
    for text in expected:
        assert text in message, message


def test_an_empty_or_wrong_state_directory_is_named(tmp_path: Path) -> None:
    message = error_of("get", "-n", "daily-report", "--state-dir", str(tmp_path / "s"))
    assert f"state directory {tmp_path / 's'}" in message
    assert "reconciler sync --repo REPO" in message
