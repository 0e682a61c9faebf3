"""Use of a Workflow over the daemon's HTTP API: only its owner and those granted, by token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.app.gitfixtures import Remote

PROJECT = Path(__file__).resolve().parents[2]
TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789", "carol": "tok-carol-012345"}


def wait_for(condition: Callable[[], bool], *, seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def call(port: int, method: str, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers=headers,
        data=b"" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as failure:
        return failure.code, failure.read()
    except OSError:
        return 0, b""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    import socket

    remote = Remote(tmp_path)
    remote.copy_examples()
    remote.write(
        ".reconciler.yaml",
        remote.read(".reconciler.yaml")
        + "\naccess:\n"
        + '  - workflows: [daily-report]\n    owner: alice\n    use: ["group:analysts"]\n',
    )
    remote.commit("daily-report belongs to alice, analysts may use it")
    for name, token in TOKENS.items():
        (tmp_path / f"{name}.token").write_text(token + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "status_enabled: false\nusers:\n"
        f"  - {{name: alice, token_file: {tmp_path / 'alice.token'}}}\n"
        f"  - {{name: bob, token_file: {tmp_path / 'bob.token'}, groups: [analysts]}}\n"
        f"  - {{name: carol, token_file: {tmp_path / 'carol.token'}, groups: [finance]}}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
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
        env={**os.environ, "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port}"},
    )
    try:
        wait_for(lambda: call(port, "GET", "/readyz")[0] == 200, what="the daemon")
        yield port, state
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        for token in TOKENS.values():
            assert token not in err


RUNS = "/api/v1/workflows/public/daily-report/runs"


def test_a_granted_person_triggers_and_reads_and_another_gets_403(
    daemon: tuple[int, Path],
) -> None:
    port, state = daemon
    status, body = call(port, "POST", RUNS, TOKENS["bob"])  # an analyst: granted
    assert status == 201, body
    run_id = json.loads(body)["run_id"]

    def done() -> bool:
        status, body = call(port, "GET", f"{RUNS}/{run_id}", TOKENS["bob"])
        return status == 200 and json.loads(body)["state"] in ("succeeded", "failed")

    wait_for(done, seconds=60, what="the run")
    status, body = call(port, "GET", f"{RUNS}/{run_id}", TOKENS["bob"])
    document = json.loads(body)
    assert (document["state"], document["requested_by"]) == ("succeeded", "bob")
    status, log = call(port, "GET", f"{RUNS}/{run_id}/log", TOKENS["bob"])
    assert status == 200
    assert b"==> generate-report <==" in log
    # carol is in no granted group: 403 for every use, and it is recorded
    assert call(port, "POST", RUNS, TOKENS["carol"])[0] == 403
    assert call(port, "GET", f"{RUNS}/{run_id}", TOKENS["carol"])[0] == 403
    assert call(port, "GET", f"{RUNS}/{run_id}/log", TOKENS["carol"])[0] == 403
    assert call(port, "POST", RUNS, None)[0] == 401
    assert call(port, "POST", RUNS, "not-a-token")[0] == 401
    assert call(port, "POST", "/api/v1/workflows/public/nope/runs", TOKENS["alice"])[0] == 404
    # the owner may use it too; a workflow without grants is nobody's to use
    assert call(port, "POST", RUNS, TOKENS["alice"])[0] == 201
    other = "/api/v1/workflows/public/parallel-batch-pipeline/runs"
    assert call(port, "POST", other, TOKENS["alice"])[0] == 403
    events = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "events",
            "-n",
            "daily-report",
            "--state-dir",
            str(state),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=True,
    ).stdout
    kinds = [(e["kind"], e["message"]) for e in json.loads(events)]
    assert any(k == "AccessDenied" and "carol may not use" in m for k, m in kinds)
    assert any(k == "RunTriggered" and "requested by bob via API" in m for k, m in kinds)


def test_cancel_by_a_granted_person(daemon: tuple[int, Path]) -> None:
    port, _ = daemon
    status, body = call(port, "POST", RUNS, TOKENS["alice"])
    assert status == 201
    run_id = json.loads(body)["run_id"]
    status, _ = call(port, "POST", f"{RUNS}/{run_id}/cancel", TOKENS["carol"])
    assert status == 403
    status, body = call(port, "POST", f"{RUNS}/{run_id}/cancel", TOKENS["bob"])
    assert status in (202, 409)  # 409: it already ended (the step is short)
