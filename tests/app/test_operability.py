"""What the daemon tells operators: probes, /metrics, webhooks, JSON logs, events; over real
HTTP, with real daemons on real git remotes."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.app.health import DaemonServer, Health
from reconciler.app.logs import configure_logging, log_context
from reconciler.app.metrics import PrometheusRecorder
from reconciler.app.webhooks import Webhooks, WebhookSecrets
from reconciler.core.redaction import Redactor
from tests.app.gitfixtures import Remote, git

PROJECT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-hook"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], *, seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def http(
    port: int,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as failure:
        return failure.code, failure.read()
    except OSError:
        return 0, b""


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, text = http(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def daemon_on_examples(tmp_path: Path) -> Iterator[tuple[Remote, int, subprocess.Popen[str]]]:
    remote = Remote(tmp_path)
    remote.copy_examples()
    port = free_port()
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text(SECRET + "\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--repo",
            remote.url,
            "--state-dir",
            str(tmp_path / "state"),
            "--interval",
            "3600",  # only the first pass and webhooks make passes
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
        env={
            **os.environ,
            "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port}",
            "RECONCILER_WEBHOOK_GITHUB_SECRET_FILE": str(secret_file),
            "RECONCILER_WEBHOOK_TOKEN": SECRET,
            "RECONCILER_STATUS_ENABLED": "false",
            "RECONCILER_LOG_FORMAT": "json",
        },
    )
    try:
        wait_for(lambda: http(port, "/readyz")[0] == 200, what="the daemon to be ready")
        yield remote, port, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def github_push(port: int, branch: str = "main", *, secret: str = SECRET) -> int:
    body = json.dumps({"ref": f"refs/heads/{branch}", "after": "0" * 40}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    status, _ = http(
        port,
        "/hooks/github",
        body=body,
        headers={
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
        },
    )
    return status


def test_metrics_probes_webhooks_and_json_logs_of_a_real_daemon(
    daemon_on_examples: tuple[Remote, int, subprocess.Popen[str]],
) -> None:
    remote, port, process = daemon_on_examples
    first = metrics(port)
    assert sample(first, "reconciler_syncs_total", result="succeeded") == 1
    assert sample(first, "reconciler_sync_duration_seconds_count", result="succeeded") == 1
    assert sample(first, "reconciler_workflows", state="active") == 4
    assert sample(first, "reconciler_leader") == 1
    assert sample(first, "reconciler_git_fetch_duration_seconds_count") >= 1
    head = git(remote.work, "rev-parse", "HEAD")
    info = [k for k in first if k[0] == "reconciler_applied_revision_info"]
    assert dict(info[0][1])["revision"] == head
    assert http(port, "/healthz")[0] == 200

    # a push, announced by a signed GitHub webhook, is synced at once (the interval is 1 h)
    text = remote.read("workflows/daily-report.yaml")
    remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", "cpu: 2"))
    remote.commit("More CPU")
    assert github_push(port) == 202
    wait_for(
        lambda: sample(metrics(port), "reconciler_syncs_total", result="succeeded") == 2,
        what="the webhook's pass",
    )
    # a manual run: runs, steps and their durations are counted
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "run",
            "-n",
            "parallel-batch-pipeline",
            "--state-dir",
            str(Path(remote.work).parent / "state"),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=True,
    )
    assert done.stdout.strip()
    wait_for(
        lambda: sample(metrics(port), "reconciler_runs_total", result="succeeded") == 1,
        seconds=60,
        what="the run",
    )
    after = metrics(port)
    assert sample(after, "reconciler_run_duration_seconds_count", result="succeeded") == 1
    assert sample(after, "reconciler_steps_total", result="succeeded") >= 3
    assert sample(after, "reconciler_webhooks_total", source="github", result="accepted") == 1

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert all(
        {"time", "level", "logger", "message", "workflow", "run", "step"} <= set(line)
        for line in lines
    )
    steps = [line for line in lines if line["step"] is not None]
    assert steps, "the executor logs each step with its context"
    assert all(
        line["run"] and line["workflow"] == "public/parallel-batch-pipeline" for line in steps
    )
    assert any(line["message"] == "daemon stopped" for line in lines)


def test_readiness_follows_the_source(
    daemon_on_examples: tuple[Remote, int, subprocess.Popen[str]],
) -> None:
    remote, port, _ = daemon_on_examples
    moved = remote.bare.with_name("gone.git")
    remote.bare.rename(moved)
    try:
        assert github_push(port) == 202
        wait_for(lambda: http(port, "/readyz")[0] == 503, seconds=60, what="readiness to drop")
        _, body = http(port, "/readyz")
        assert "unreachable" in json.loads(body)["reason"]
        assert http(port, "/healthz")[0] == 200  # alive: the loop still makes passes
    finally:
        moved.rename(remote.bare)
    assert github_push(port) == 202
    wait_for(lambda: http(port, "/readyz")[0] == 200, seconds=60, what="readiness to come back")
    assert sample(metrics(port), "reconciler_git_errors_total", operation="ls-remote") >= 1


# -- webhooks, in process ------------------------------------------------------------------


class Pokes:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1


@pytest.fixture
def hooks() -> Iterator[tuple[int, Pokes, PrometheusRecorder]]:
    pokes = Pokes()
    recorder = PrometheusRecorder()
    webhooks = Webhooks(
        WebhookSecrets(github=SECRET, gitlab=SECRET, generic=SECRET),
        branch="main",
        poke=pokes,
        count=lambda source, result: recorder.count("webhooks_total", source=source, result=result),
        max_body=4096,
    )
    server = DaemonServer(
        "127.0.0.1:0", Health(time.monotonic), recorder=recorder, webhooks=webhooks
    )
    server.start()
    try:
        yield server.port, pokes, recorder
    finally:
        server.stop()


def test_github_signatures(hooks: tuple[int, Pokes, PrometheusRecorder]) -> None:
    port, pokes, _ = hooks
    assert github_push(port) == 202
    assert github_push(port, secret="wrong") == 401
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert http(port, "/hooks/github", body=body, headers={"X-GitHub-Event": "push"})[0] == 401
    assert github_push(port, branch="feature") == 200  # another branch: ignored
    ping = json.dumps({"zen": "hi"}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), ping, hashlib.sha256).hexdigest()
    status, answer = http(
        port,
        "/hooks/github",
        body=ping,
        headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": signature},
    )
    assert (status, json.loads(answer)["pong"]) == (200, True)
    assert pokes.count == 1


def test_gitlab_and_generic_tokens(hooks: tuple[int, Pokes, PrometheusRecorder]) -> None:
    port, pokes, recorder = hooks
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
    assert http(port, "/hooks/gitlab", body=body, headers=gitlab)[0] == 202
    assert (
        http(port, "/hooks/gitlab", body=body, headers={**gitlab, "X-Gitlab-Token": "x"})[0] == 401
    )
    assert (
        http(port, "/hooks/generic", body=b"", headers={"Authorization": f"Bearer {SECRET}"})[0]
        == 202
    )
    assert (
        http(port, "/hooks/generic", body=b"{}", headers={"Authorization": "Bearer no"})[0] == 401
    )
    assert http(port, "/hooks/generic", body=b"{}")[0] == 401
    assert http(port, "/hooks/unknown", body=b"{}")[0] == 404
    assert pokes.count == 2
    families = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(recorder.exposition().decode())
        for s in f.samples
    }
    assert (
        families[("reconciler_webhooks_total", (("result", "refused_401"), ("source", "gitlab")))]
        == 1
    )


def test_an_oversized_body_is_refused_unread(hooks: tuple[int, Pokes, PrometheusRecorder]) -> None:
    port, pokes, _ = hooks
    big = b"{" + b" " * 10_000 + b"}"
    signature = "sha256=" + hmac.new(SECRET.encode(), big, hashlib.sha256).hexdigest()
    status, _ = http(
        port,
        "/hooks/github",
        body=big,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature},
    )
    assert status in (413, 0)  # 413, or the connection closed before the body was sent
    assert pokes.count == 0


def test_an_unconfigured_webhook_says_how_to_enable_it() -> None:
    webhooks = Webhooks(WebhookSecrets(), branch="main", poke=lambda: None)
    answer = webhooks.handle("github", {"content-length": "2"}, lambda n: b"{}")
    assert answer.status == 404
    assert "webhook_github_secret_file" in answer.body["error"]


def test_a_burst_of_webhooks_coalesces_into_one_pass(tmp_path: Path) -> None:
    """The daemon's poke coalesces: twenty webhooks during a pass make one more pass."""
    from reconciler.app.daemon import Daemon, LoopOptions

    passes: list[float] = []
    gate = threading.Event()

    class SlowSyncer:
        source = type("S", (), {"display_url": "x"})()

        def sync(self, *, force: bool = False) -> Any:
            passes.append(time.monotonic())
            gate.wait(0.5)  # a pass takes a while
            from reconciler.app.syncing import SyncOutcome

            return SyncOutcome(None, "unchanged")

        def close(self) -> None:
            return None

    daemon = Daemon(
        SlowSyncer(),  # type: ignore[arg-type]
        options=LoopOptions(interval=3600, debounce=2.0),
    )
    webhooks = Webhooks(WebhookSecrets(generic=SECRET), branch="main", poke=daemon.poke)
    server = DaemonServer("127.0.0.1:0", Health(time.monotonic), webhooks=webhooks)
    server.start()
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for(lambda: len(passes) == 1, what="the first pass")
        threads = [
            threading.Thread(
                target=http,
                args=(server.port, "/hooks/generic"),
                kwargs={"body": b"", "headers": {"Authorization": f"Bearer {SECRET}"}},
            )
            for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: len(passes) >= 2, what="a pass after the burst")
        time.sleep(1.5)
        assert len(passes) == 2  # one pass for the whole burst
    finally:
        daemon.stop()
        runner.join(timeout=10)
        server.stop()


# -- probes, in process ------------------------------------------------------------------


def test_liveness_fails_on_a_stuck_loop() -> None:
    clock = [0.0]
    health = Health(lambda: clock[0], stale_after=60)
    health.set_role("leader")
    health.record("succeeded", source_ok=True)
    server = DaemonServer("127.0.0.1:0", health)
    server.start()
    try:
        assert http(server.port, "/healthz")[0] == 200
        assert http(server.port, "/readyz")[0] == 200
        clock[0] += 61  # no pass for longer than the limit: the loop is stuck
        status, body = http(server.port, "/healthz")
        assert status == 503
        assert "no pass finished" in json.loads(body)["reason"]
        health.record("failed", source_ok=True, message="2 manifest error(s)")
        assert http(server.port, "/healthz")[0] == 200
        status, body = http(server.port, "/readyz")
        assert status == 503
        assert "manifest error" in json.loads(body)["reason"]
        health.record("unchanged", source_ok=True)  # an unchanged pass keeps the verdict
        assert http(server.port, "/readyz")[0] == 503
        health.set_role("standby")
        assert http(server.port, "/readyz")[0] == 200  # a standby is ready to take over
    finally:
        server.stop()


# -- logs ------------------------------------------------------------------------------


def test_json_logs_carry_context_and_never_a_secret() -> None:
    canary = "canary-7f3a9c1e5d"
    stream = io.StringIO()
    handler = configure_logging(
        level="info", log_format="auto", redact=Redactor([canary]), stream=stream
    )
    try:
        logger = logging.getLogger("reconciler.test")
        with log_context(workflow="public/a", run="a-m1"):
            logger.info("step %s done with %s", "s1", canary, extra={"step": "s1"})
        logger.warning(
            "token ghp_%s",
            "a" * 36,
            extra={"detail": f"value={canary}", "summary": {"create": 2, "why": [canary]}},
        )
        try:
            raise RuntimeError(f"boom {canary}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # not a TTY: JSON
    assert lines[0]["workflow"] == "public/a"
    assert (lines[0]["run"], lines[0]["step"]) == ("a-m1", "s1")
    assert lines[1]["workflow"] is None
    assert canary not in stream.getvalue()
    assert "ghp_aaaa" not in stream.getvalue()
    assert "[REDACTED]" in lines[0]["message"]
    assert "[REDACTED]" in lines[1]["detail"]
    assert lines[1]["summary"] == {"create": 2, "why": ["[REDACTED]"]}  # structured, redacted
    assert "boom [REDACTED]" in lines[2]["exception"]


def test_text_logs_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    handler = configure_logging(level="info", stream=stream)
    try:
        logging.getLogger("reconciler.test").info("hello", extra={"workflow": "public/a"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue()
    assert "hello [workflow=public/a]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_local_event_log_shows_applies_deletes_and_held_deletions(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.app.cli import cli

    repo = tmp_path / "repo"
    shutil.copytree(PROJECT / "examples-repo", repo)
    state = tmp_path / "state"
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["sync", "--repo", str(repo), "--state-dir", str(state)]).exit_code == 0
    )
    for name in ("daily-report", "customer-batch-pipeline", "parallel-batch-pipeline"):
        (repo / "workflows" / f"{name}.yaml").unlink()
    assert (
        runner.invoke(cli, ["sync", "--repo", str(repo), "--state-dir", str(state)]).exit_code == 1
    )
    result = runner.invoke(cli, ["events", "--state-dir", str(state), "-o", "json"])
    assert result.exit_code == 0, result.output
    kinds = [(e["workflow"], e["kind"]) for e in json.loads(result.output)]
    assert ("public/daily-report", "Applied") in kinds
    assert ("sync", "DeletionsHeld") in kinds


FAILING = """\
version: v2alpha
name: nightly-export
type: workflow
tags: [finance]
spec:
  dag:
    - name: export
      spec:
        stack: container
        stackSpec:
          image: alpine:3.20
          command: [sh, -c, "echo exporting; exit 3"]
"""


class Receiver:
    """A local HTTP endpoint recording what is posted to it (a Slack stand-in)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def test_a_failed_run_sends_a_slack_message(tmp_path: Path) -> None:
    receiver = Receiver()
    remote = Remote(tmp_path)
    remote.copy_examples()
    remote.write("workflows/nightly-export.yaml", FAILING)
    remote.write(
        ".reconciler.yaml",
        remote.read(".reconciler.yaml")
        + "\nnotifications:\n  - target: team-slack\n    on: [failure]\n    tags: [finance]\n",
    )
    remote.commit("A workflow that fails, and who hears of it")
    url_file = tmp_path / "slack-url"
    url_file.write_text(receiver.url)
    config = tmp_path / "config.yaml"
    config.write_text(
        "notify_targets:\n"
        f"  team-slack: {{url_file: {url_file}, format: slack}}\n"
        "status_enabled: false\n"
    )
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--config",
            str(config),
            "--repo",
            remote.url,
            "--state-dir",
            str(state),
            "--interval",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
    )
    try:
        from reconciler.adapters.clocks import SystemClock
        from reconciler.adapters.local.store import LocalStore

        def applied() -> bool:
            store = LocalStore(state, clock=SystemClock())
            try:
                return len(store.all_workflows()) == 5
            finally:
                store.close()

        wait_for(applied, what="the workflows applied")
        for name in ("nightly-export", "daily-report"):
            done = subprocess.run(
                [sys.executable, "-m", "reconciler", "run", "-n", name, "--state-dir", str(state)],
                capture_output=True,
                text=True,
                cwd=PROJECT,
            )
            assert done.returncode == 0, done.stderr
        wait_for(lambda: len(receiver.received) >= 1, seconds=60, what="the Slack message")
        time.sleep(2)  # daily-report succeeds: no message for it (only failures, only finance)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        receiver.server.shutdown()
    assert process.returncode == 0, err
    assert len(receiver.received) == 1
    message = receiver.received[0]
    assert "nightly-export" in message["text"]
    assert "failed" in message["text"].lower()
    assert message["blocks"]
    assert receiver.url not in err  # the webhook URL is a secret


def test_a_scheduled_run_measures_its_lag_behind_the_slot(tmp_path: Path) -> None:
    from datetime import timedelta

    from reconciler.adapters.clocks import SystemClock
    from reconciler.adapters.local.runner import LocalStepRunner
    from reconciler.adapters.local.secrets import SecretStore
    from reconciler.adapters.local.store import LocalStore
    from reconciler.app.running import Executor
    from reconciler.core.loading import load_manifest_file
    from reconciler.core.names import Revision, RunId
    from reconciler.core.runs import new_run
    from reconciler.core.workflows import DesiredWorkflow, WorkflowApply

    clock = SystemClock()
    store = LocalStore(tmp_path / "state", clock=clock)
    (loaded,) = load_manifest_file(
        "f.yaml", FAILING.encode(), workspace="public", variables={}
    ).workflows
    desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="f.yaml")
    store.apply_workflow(WorkflowApply(desired, source="t", revision=Revision("r"), owner="t"))
    slot = clock.now() - timedelta(seconds=5)
    run = new_run(
        workspace="public",
        run_id=RunId("nightly-export-m1"),
        name=desired.name,
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("r"),
        spec=desired.spec,
        spec_hash=desired.spec_hash,
        now=slot,
        slot=slot,
    )
    store.create_runs([run])
    recorder = PrometheusRecorder()
    finished: list[str] = []
    runner = LocalStepRunner(
        tmp_path / "state", secrets=SecretStore(tmp_path / "state"), clock=clock
    )
    executor = Executor(
        store,
        runner,
        clock=clock,
        recorder=recorder,
        on_run_finished=lambda r: finished.append(r.state),
    )
    executor.notify()
    deadline = time.monotonic() + 30
    while (executor.runs or not finished) and time.monotonic() < deadline:
        executor.step(wait=0.2)
    store.close()
    assert finished == ["failed"]
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(recorder.exposition().decode())
        for s in f.samples
    }
    assert values[("reconciler_schedule_lag_seconds_count", ())] == 1
    assert 5 <= values[("reconciler_schedule_lag_seconds_sum", ())] < 60
    assert values[("reconciler_runs_total", (("result", "failed"),))] == 1
    assert values[("reconciler_steps_total", (("result", "failed"),))] == 1
