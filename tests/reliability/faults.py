"""Fault injection for the reliability tests: real daemons, real git servers, loopback only.

- ``GitDaemon``: ``git daemon`` serving a directory over git:// on 127.0.0.1 (stop and
  start it again on the same port to take the remote down and bring it back);
- ``SlowProxy``: a loopback TCP proxy that holds every chunk for ``delay`` seconds (a slow
  network path in front of ``git daemon``);
- ``DaemonProcess``: ``python -m reconciler daemon`` as a user runs it, its log in a file
  (a pipe would fill up and block it), its Prometheus counters on a known port;
- readers of what the daemon wrote: the last sync record, the applied workflows, files on
  the status branch;
- ``Figures``: what a test measured, printed and written to ``bench/out/`` when that exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
BENCH_OUT = PROJECT / "bench" / "out"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], *, seconds: float = 30.0, what: str = "", step: float = 0.05
) -> float:
    """Poll until ``condition()`` holds; the seconds it took. AssertionError after ``seconds``."""
    started = time.monotonic()
    deadline = started + seconds
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what or condition}")
        time.sleep(step)


def utcnow() -> datetime:
    return datetime.now(UTC)


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=check, timeout=120
    )
    return done.stdout.strip()


# -- git servers --------------------------------------------------------------------------


class GitDaemon:
    """``git daemon --export-all`` for every repository under ``base``, on 127.0.0.1."""

    def __init__(self, base: Path, *, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.log = base.parent / f"git-daemon-{self.port}.log"

    def url(self, repository: Path) -> str:
        return f"git://127.0.0.1:{self.port}/{repository.relative_to(self.base).as_posix()}"

    def start(self) -> None:
        assert self._process is None, "already running"
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--export-all",
                    "--reuseaddr",
                    f"--base-path={self.base}",
                    "--listen=127.0.0.1",
                    f"--port={self.port}",
                    str(self.base),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._accepts, seconds=10, what="git daemon to listen")

    def _accepts(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"git daemon exited: {self.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


class SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port`` that holds each chunk ``delay``
    seconds (both ways); ``delay = 0`` passes bytes straight through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="slow-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        pumps = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]
        for pump in pumps:
            pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                held_until = time.monotonic() + self.delay
                while time.monotonic() < held_until and not self._closed.is_set():
                    time.sleep(0.05)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


# -- the daemon as a process --------------------------------------------------------------


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    state: Path
    log: Path
    http_port: int
    max_rss_kib: int | None = None  # once stopped: the peak RSS of it and its children

    @property
    def alive(self) -> bool:
        if self.process.returncode is not None:
            return False
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid:  # it died: keep what wait4 says, Popen can no longer reap it
            self.max_rss_kib = usage.ru_maxrss
            self.process.returncode = os.waitstatus_to_exitcode(status)
            return False
        return True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def counters(self, name: str) -> dict[str, float]:
        """``reconciler_<name>_total`` by its label values (one label), from /metrics."""
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/metrics", timeout=30
            ) as answer:
                text = answer.read().decode()
        except OSError:
            return {}
        found: dict[str, float] = {}
        pattern = re.compile(rf'^reconciler_{name}_total(?:{{\w+="([^"]*)"}})? (\S+)$', re.M)
        for label, value in pattern.findall(text):
            found[label] = float(value)
        return found

    def passes(self) -> int:
        return int(sum(self.counters("syncs").values()))

    def stop(self, *, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code (killed after ``timeout``).

        Reaped with ``wait4`` for its resource usage: ``ru_maxrss`` is the peak RSS of the
        daemon and of every child it waited for (git, parse workers)."""
        if self.process.returncode is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.max_rss_kib = usage.ru_maxrss
                self.process.returncode = os.waitstatus_to_exitcode(status)
                return self.process.returncode
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError(f"the daemon did not stop in {timeout:g} s")
            time.sleep(0.05)


def start_daemon(
    repo: str,
    state: Path,
    *,
    interval: float = 0.5,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> DaemonProcess:
    state.mkdir(parents=True, exist_ok=True)
    log = state.parent / f"{state.name}-daemon.log"
    port = free_port()
    environment = {
        **os.environ,
        "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port}",
        "RECONCILER_LOG_FORMAT": "text",
        "RECONCILER_SHUTDOWN_GRACE": "1",
        "RECONCILER_STATUS_FLUSH_INTERVAL": "0.5",
        **(env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--repo",
            repo,
            "--state-dir",
            str(state),
            "--interval",
            str(interval),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # a pipe, drained into the log: no file limit applies to it
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=PROJECT,
    )
    threading.Thread(target=_drain, args=(process, log), daemon=True).start()
    return DaemonProcess(process, state, log, port)


def _drain(process: subprocess.Popen[bytes], log: Path) -> None:
    assert process.stdout is not None
    with log.open("ab", buffering=0) as out:
        for line in process.stdout:
            out.write(line)


@contextlib.contextmanager
def running_daemon(repo: str, state: Path, **kwargs: Any) -> Iterator[DaemonProcess]:
    daemon = start_daemon(repo, state, **kwargs)
    try:
        yield daemon
    finally:
        if daemon.alive:
            daemon.stop()


# -- what the daemon wrote ----------------------------------------------------------------


@dataclass(frozen=True)
class SyncRow:
    result: str
    message: str
    revision: str | None
    finished_at: datetime
    errors: list[dict[str, Any]]
    summary: dict[str, int]


def _read_only(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)


def last_sync(state: Path) -> SyncRow | None:
    if not (state / "state.db").exists():
        return None
    with contextlib.closing(_read_only(state)) as db:
        try:
            row = db.execute(
                "SELECT result, message, revision, finished_at, errors_json, summary_json "
                "FROM syncs ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return None
    if row is None:
        return None
    return SyncRow(
        result=row[0],
        message=row[1],
        revision=row[2],
        finished_at=datetime.fromisoformat(row[3]),
        errors=json.loads(row[4]),
        summary=json.loads(row[5]),
    )


def applied(state: Path, owner: str = "default") -> dict[str, str]:
    """Applied (not deleted) workflows of ``owner``: key -> spec hash."""
    if not (state / "state.db").exists():
        return {}
    with contextlib.closing(_read_only(state)) as db:
        try:
            rows = db.execute(
                "SELECT key, spec_hash FROM workflows WHERE owner = ? AND state != 'deleted'",
                (owner,),
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
    return {str(key): str(spec_hash) for key, spec_hash in rows}


def branch_file(bare: Path, path: str, *, branch: str = "status") -> str | None:
    done = subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=bare, capture_output=True, text=True, timeout=30
    )
    return done.stdout if done.returncode == 0 else None


def status_sync(bare: Path) -> dict[str, Any] | None:
    """sync.json on the status branch of ``bare``."""
    text = branch_file(bare, "sync.json")
    return None if text is None else dict(json.loads(text))


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a live process (its peak resident set), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


# -- figures ------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a test measured: printed (``pytest -s`` shows it) and kept in bench/out/."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.data[key] = value
        print(f"[reliability-{self.name}] {key}: {json.dumps(value, default=str)}")

    def save(self) -> Path | None:
        if not BENCH_OUT.is_dir():
            return None
        path = BENCH_OUT / f"reliability-{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        return path
