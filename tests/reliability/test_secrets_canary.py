"""Canary secrets through every path of a real daemon, then grepped for everywhere.

Canary values go into the local secret store (``reconciler secret set``: ``KEY=VALUE``,
``KEY=@FILE``, ``KEY=-``), are projected into steps (whole and mixed into text), and the
steps print them to stdout and stderr, in pieces across a pause (a chunk boundary), and
fail with them in their output; a step asks for a key the secret does not have; manifests
break near a templated value, or carry a canary pasted in by mistake (also one set after
the daemon started). The daemon runs with ``log_level: debug``, JSON logs, the status
branch, ``/metrics`` and notifications on.

Then every place it writes is searched: its stdout/stderr, the whole status branch history
(``git log -p`` and every object reachable from it), the status writer's own repository,
``/metrics``, ``/healthz``, ``/readyz``, the notifications received, ``reconciler events``,
``runtime get``, ``get -d``, ``log`` (JSON where it exists), the step log files and every
other file of the state directory (its SQLite database included) but the secret store and
the mirror of the manifests repository (which holds what was pushed there). Expected: no
canary anywhere. The step log is the user's own output, and it is redacted too
(``reconciler/adapters/local/runner.py`` hands the values of the step's secrets to the
process's log writer).

Canaries are searched for by a random core each holds, so an escaped (JSON, Markdown) or
partial copy counts as much as the exact value.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.local.secrets import SecretStore
from reconciler.app.serving import all_secret_values
from reconciler.core.redaction import LiveRedactor
from tests.app.gitfixtures import Remote, git
from tests.reliability.conftest import report

PROJECT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


def core() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Canary:
    name: str
    value: str
    core: str  # random, in the value: what is searched for


def canaries() -> dict[str, Canary]:
    plain, special, stdin, late, pasted, git_token, hook = (core() for _ in range(7))
    return {
        "TOKEN": Canary("TOKEN", f"canary-{plain}", plain),
        # regex specials, quotes, a backslash and spaces: escaping must not hide it
        "SPECIAL": Canary("SPECIAL", f'Sp3c!al +(x)*[y]?{{z}}|^$ \\ "q" {special}', special),
        "STDIN": Canary("STDIN", f"from-stdin-{stdin}", stdin),
        "LATE": Canary("LATE", f"late-{late}", late),  # set after the daemon started
        "PASTED": Canary("PASTED", f"pasted-{pasted}", pasted),  # also pasted in a manifest
        # the daemon's own credentials, never in the store: they must not even be redacted,
        # only absent (a step's environment is built from scratch)
        "GIT_TOKEN": Canary("GIT_TOKEN", f"git-token-{git_token}", git_token),
        "HOOK_TOKEN": Canary("HOOK_TOKEN", f"hook-token-{hook}", hook),
    }


def step(name: str, script: str, depends: list[str] | None = None) -> str:
    needs = f"      depends: {json.dumps(depends)}\n" if depends else ""
    return (
        f"    - name: {name}\n{needs}"
        "      spec:\n"
        "        stack: container\n"
        "        stackSpec:\n"
        "          image: docker.io/library/alpine:3.20\n"
        "          command: [sh]\n"
        f"          arguments: [-c, {json.dumps(script)}]\n"
    )


def workflow(name: str, secret: str, env: dict[str, str], steps: list[str]) -> str:
    variables = "".join(
        f"          - key: {key}\n            value: {json.dumps(value)}\n"
        for key, value in env.items()
    )
    return (
        "version: v2alpha\n"
        f"name: {name}\n"
        "type: workflow\n"
        "tags: [canary]\n"
        "spec:\n"
        "  use:\n"
        "    projection:\n"
        "      secrets:\n"
        f"        - id: {secret}\n"
        "          contextAlias: app\n"
        "      projections:\n"
        "        envVars:\n" + variables + "  dag:\n" + "".join(steps)
    )


PROJECTED = {
    "TOKEN": "{{.secrets.app.TOKEN}}",
    "SPECIAL": "{{.secrets.app.SPECIAL}}",
    "STDIN": "{{.secrets.app.STDIN}}",
    "PASTED": "{{.secrets.app.PASTED}}",
    "MIXED": "Bearer {{.secrets.app.TOKEN}} run={{.defaultProjections.runId}}",
}
ECHO = workflow(
    "canary-echo",
    "canary-secret",
    PROJECTED,
    [
        step("stdout", 'echo "token=$TOKEN special=$SPECIAL stdin=$STDIN pasted=$PASTED"'),
        step("stderr", 'echo "to stderr: $TOKEN $SPECIAL $MIXED" >&2'),
        step("environment", "env | sort", ["stdout"]),
        # a value split across two writes, a pause between: the log writer sees two chunks
        step(
            "split",
            "printf '%s' \"$(printf '%s' \"$TOKEN\" | cut -c1-20)\"; sleep 0.3; "
            "printf '%s\\n' \"$(printf '%s' \"$TOKEN\" | cut -c21-)\"; "
            "printf 'tail: %s\\n' \"$SPECIAL\"",
            ["stderr"],
        ),
    ],
)
FAIL = workflow(
    "canary-fail",
    "canary-secret",
    PROJECTED,
    [step("leak-and-fail", 'echo "failing with $TOKEN"; echo "$SPECIAL" >&2; exit 3')],
)
MISSING_KEY = workflow(
    "canary-missing-key",
    "canary-secret",
    {"NOPE": "{{.secrets.app.NO_SUCH_KEY}}"},
    [step("never-starts", "echo unreachable")],
)
LATE = workflow(
    "canary-late",
    "late-secret",
    {"LATE": "{{.secrets.app.LATE}}"},
    [step("print-late", 'echo "late=$LATE"; echo "late err=$LATE" >&2; exit 1')],
)
# a manifest error next to a templated value: the alias is not declared
BROKEN_TEMPLATE = ECHO.replace("canary-echo", "broken-template").replace(
    '"{{.secrets.app.TOKEN}}"', '"{{.secrets.undeclared.TOKEN}}"'
)


def pasted(name: str, value: str) -> str:
    """A manifest with a secret pasted where it does not belong: the error quotes it."""
    return (
        "version: v2alpha\n"
        f"name: {name}\n"
        "type: workflow\n"
        f"description: {json.dumps('oops ' + value)}\n"
        "spec:\n"
        "  schedule:\n"
        "    crons: ['0 3 * * *']\n"
        f"    timezone: {json.dumps(value)}\n"
        f"  unknownField: {json.dumps(value)}\n"
        "  dag:\n" + step("s", "true")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as failure:
        return str(failure.read().decode())


def http_post(port: int, path: str, token: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=b"{}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as failure:
        return str(failure.read().decode())


@dataclass
class Sink:
    """A notification target on 127.0.0.1: keeps every body it receives."""

    bodies: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"


@pytest.fixture
def sink() -> Iterator[Sink]:
    received = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            received.bodies.append(self.rfile.read(length).decode("utf-8", "replace"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    received.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=received.server.serve_forever, daemon=True)
    thread.start()
    yield received
    received.server.shutdown()
    received.server.server_close()


@dataclass
class Search:
    """Places searched and the canaries found in each."""

    canaries: list[Canary]
    places: list[str] = field(default_factory=list)
    found: dict[str, list[str]] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)  # [REDACTED] where a canary was

    def look(self, place: str, text: str | bytes) -> None:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        self.places.append(place)
        hits = [c.name for c in self.canaries if c.core.encode() in data]
        self.masks[place] = data.count(b"[REDACTED]")
        if hits:
            self.found[place] = hits

    @property
    def occurrences(self) -> int:
        return sum(len(names) for names in self.found.values())


def wait_for(
    condition: Callable[[], bool], *, seconds: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def test_no_canary_leaves_the_daemon(tmp_path: Path, sink: Sink) -> None:
    marks = canaries()
    state = tmp_path / "state"
    logs = tmp_path / "daemon.log"
    port = free_port()
    config = tmp_path / "settings.yaml"
    config.write_text(
        json.dumps(
            {
                "log_level": "debug",
                "log_format": "json",
                "http_address": f"127.0.0.1:{port}",
                "status_flush_interval": 1,
                "interval": 1,
                "notify_targets": {"sink": {"url": sink.url, "format": "generic"}},
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
        "RECONCILER_CONFIG": str(config),
        "RECONCILER_STATE_DIR": str(state),
        "RECONCILER_GIT_TOKEN": marks["GIT_TOKEN"].value,
        "RECONCILER_WEBHOOK_TOKEN": marks["HOOK_TOKEN"].value,
    }
    search = Search(list(marks.values()))
    # not required: the SQLite database keeps sync errors as the validator wrote them, and
    # an error may quote a value pasted into a manifest (which is in git already)
    database = Search(list(marks.values()))

    def cli(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=PROJECT,
            env=env,
        )
        output = done.stdout + done.stderr
        search.look(f"reconciler {' '.join(args)}", output)
        return done.stdout

    # the secret store, each way of setting a value
    special_file = tmp_path / "special.txt"
    special_file.write_text(marks["SPECIAL"].value)
    cli(
        "secret",
        "set",
        "canary-secret",
        f"TOKEN={marks['TOKEN'].value}",
        f"SPECIAL=@{special_file}",
        f"PASTED={marks['PASTED'].value}",
    )
    cli("secret", "set", "canary-secret", "STDIN=-", stdin=marks["STDIN"].value)
    special_file.unlink()
    cli("secret", "list", "-o", "json")

    remote = Remote(tmp_path)
    remote.write(
        ".reconciler.yaml",
        "version: v1\nnotifications:\n  - target: sink\n    on: [failure, success]\n",
    )
    remote.write("workflows/echo.yaml", ECHO)
    remote.write("workflows/fail.yaml", FAIL)
    remote.write("workflows/missing-key.yaml", MISSING_KEY)
    remote.write("workflows/broken-template.yaml", BROKEN_TEMPLATE)
    remote.write("workflows/pasted.yaml", pasted("pasted", marks["PASTED"].value))
    remote.commit("canary workflows")

    with logs.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "daemon", "--repo", remote.url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "canary-echo" in cli("get", "-a", "-o", "json"),
            seconds=60,
            what="the first sync",
            log=logs,
        )
        # a secret set while the daemon runs, a workflow using it, and the value pasted
        cli("secret", "set", "late-secret", f"LATE={marks['LATE'].value}")
        remote.write("workflows/late.yaml", LATE)
        remote.write("workflows/pasted-late.yaml", pasted("pasted-late", marks["LATE"].value))
        remote.commit("a late secret")
        wait_for(
            lambda: "canary-late" in cli("get", "-a", "-o", "json"),
            seconds=60,
            what="the late workflow",
            log=logs,
        )
        names = ["canary-echo", "canary-fail", "canary-missing-key", "canary-late"]
        run_ids = {name: cli("run", "-n", name).strip() for name in names}
        states: dict[str, dict[str, Any]] = {}

        def ended(name: str, run_id: str) -> bool:
            text = cli("runtime", "get", "-n", name, "--run", run_id, "-o", "json")
            states[name] = json.loads(text)
            return states[name]["state"] not in ("pending", "running")

        for name, run_id in run_ids.items():
            wait_for(
                lambda name=name, run_id=run_id: ended(name, run_id),  # type: ignore[misc]
                seconds=90,
                what=f"run {run_id} to end",
            )
        assert states["canary-echo"]["state"] == "succeeded", states["canary-echo"]
        for name in ("canary-fail", "canary-missing-key", "canary-late"):
            assert states[name]["state"] == "failed", states[name]

        def reported() -> bool:
            files = git(remote.bare, "ls-tree", "-r", "--name-only", "status").splitlines()
            return all(
                f"workflows/public/{name}/runs/{run_id}.json" in files
                for name, run_id in run_ids.items()
            )

        wait_for(reported, seconds=60, what="the run reports on the status branch")
        wait_for(lambda: len(sink.bodies) >= len(names), seconds=30, what="notifications")

        hook = marks["HOOK_TOKEN"].value
        accepted = http_post(port, "/hooks/generic", hook)
        refused = http_post(port, "/hooks/generic", "wrong-" + hook[::-1])
        search.look("POST /hooks/generic (accepted)", accepted)
        search.look("POST /hooks/generic (refused)", refused)
        assert "accepted" in accepted, accepted
        assert "bad or missing" in refused, refused
        for endpoint in ("/metrics", "/healthz", "/readyz"):
            search.look(f"GET {endpoint}", http_get(port, endpoint))
        cli("events", "-o", "json")
        cli("get", "-a", "-o", "json")
        for name, run_id in run_ids.items():
            cli("events", "-n", name, "-o", "json")
            cli("get", "-n", name, "-d", "-o", "json")
            cli("runtime", "get", "-n", name, "-o", "json")
            cli("runtime", "get", "-n", name, "--run", run_id, "-o", "json")
            for step_state in states[name]["steps"]:
                cli("log", "-n", name, "--run", run_id, "--container", step_state["name"])
        for name in ("broken-template", "pasted", "pasted-late"):
            cli("events", "-n", name, "-o", "json")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=90)

    # the daemon's own output, debug and JSON, up to and including its last flush
    search.look("daemon stdout and stderr", logs.read_bytes())
    for index, body in enumerate(sink.bodies):
        search.look(f"notification {index + 1}", body)
    # the status branch: its whole history, and every object reachable from it
    search.look("git log -p status", git(remote.bare, "log", "-p", "status"))
    search.look("status branch objects", reachable_objects(remote.bare, "status"))
    for cache in (state / "git").glob("status-*"):
        search.look(f"status writer repository {cache.name}", all_objects(cache))
    # every other file the daemon wrote: step logs, the database and its WAL, run directories
    mirrors = [p for p in (state / "git").iterdir() if not p.name.startswith("status-")]
    for path in sorted(state.rglob("*")):
        if not path.is_file() or "secrets" in path.relative_to(state).parts:
            continue
        if any(path.is_relative_to(mirror) for mirror in mirrors):
            continue
        relpath = path.relative_to(state)
        (database if relpath.name.startswith("state.db") else search).look(
            f"state file {relpath}", path.read_bytes()
        )
    step_logs = [
        p for p in search.places if p.startswith("state file runs/") and p.endswith(".log")
    ]

    masked = {
        "step logs": sum(n for p, n in search.masks.items() if p in step_logs),
        "status branch": search.masks["status branch objects"],
        "daemon output": search.masks["daemon stdout and stderr"],
        "reconciler log": sum(n for p, n in search.masks.items() if p.startswith("reconciler log")),
    }
    figures = {
        "places searched": len(search.places),
        "canary occurrences": search.occurrences,
        "where": search.found,
        "step log files searched": len(step_logs),
        "notifications searched": len(sink.bodies),
        "[REDACTED] marks (the canaries went through these)": masked,
        "not required: state database files searched": len(database.places),
        "not required: canary occurrences in the state database": database.occurrences,
        "not required: where": database.found,
    }
    report("secrets-canary", figures)
    assert step_logs, "no step log was searched"
    assert all(masked.values()), f"a path the canaries should have taken was not: {masked}"
    assert search.occurrences == 0, search.found


def reachable_objects(bare: Path, ref: str) -> bytes:
    listing = git(bare, "rev-list", "--objects", ref)
    ids = "".join(line.split(" ", 1)[0] + "\n" for line in listing.splitlines())
    return subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=bare,
        input=ids.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def all_objects(repo: Path) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def test_a_secret_set_while_running_is_redacted_at_once(tmp_path: Path) -> None:
    """The daemon's log redactor reads the store again when it changes (no restart)."""
    store = SecretStore(tmp_path)
    store.set("first", {"KEY": "first-value-1234"})
    redact = LiveRedactor(lambda: all_secret_values(store), stamp=store.stamp)
    assert redact("a first-value-1234 b") == "a [REDACTED] b"
    assert redact("late-value-5678") == "late-value-5678"
    store.set("late", {"KEY": "late-value-5678"})
    assert redact("late-value-5678") == "[REDACTED]"
    store.set("first", {"KEY": "rotated-value-9012"})
    assert redact("rotated-value-9012 first-value-1234") == "[REDACTED] first-value-1234"
    store.delete("late")
    assert redact("late-value-5678") == "late-value-5678"


def test_json_log_records_check_the_secret_store_once_each(tmp_path: Path) -> None:
    """A record's fields share one look at the store, and the next record sees a new secret."""
    from reconciler.app.logs import JsonFormatter

    store = SecretStore(tmp_path)
    store.set("first", {"KEY": "first-value-1234"})
    stamps: list[object] = []

    def stamp() -> object:
        stamps.append(store.stamp())
        return stamps[-1]

    formatter = JsonFormatter(LiveRedactor(lambda: all_secret_values(store), stamp=stamp))

    def record(message: str) -> dict[str, object]:
        entry = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
        entry.workflow, entry.run, entry.step = "public/a", "first-value-1234", "s"
        entry.detail = {"value": "late-value-5678"}
        return dict(json.loads(formatter.format(entry)))

    stamps.clear()
    first = record("first-value-1234 and late-value-5678")
    assert len(stamps) == 1
    assert first["message"] == "[REDACTED] and late-value-5678"
    assert first["run"] == "[REDACTED]"
    store.set("late", {"KEY": "late-value-5678"})
    second = record("late-value-5678")
    assert second["message"] == "[REDACTED]"
    assert second["detail"] == {"value": "[REDACTED]"}
