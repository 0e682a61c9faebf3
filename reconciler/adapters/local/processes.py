"""Running one DAG step of the local backend as a local process, with its log.

The local backend has no container runtime, yet the seed's examples must run
unchanged: a step writes to ``/workspace`` because its volume is mounted
there. So a step that needs more than a plain process (volumes, a memory
limit, another user) starts through ``launcher.py``, which sets the process
up and then ``exec``s the step's command; every other step takes the fast
path, a direct ``subprocess.Popen``, because a 1,000-step DAG of small steps
must not pay an interpreter start per step.

What a step gets, and how it differs from a container:

- **Volumes** are bind mounts in a private mount namespace, so only the step
  sees them at their ``target``. The mount point itself is a directory on the
  host's filesystem: when ``target`` does not exist it is created (empty) on
  the host and stays there. Without root the launcher tries an unprivileged
  user namespace; where the OS allows neither, the step fails to start with a
  ``StepStartError`` saying volumes need root.
- **Memory limit** is ``RLIMIT_AS``: each process of the step (children
  inherit the limit, each on its own) may map at most that many bytes of
  virtual address space. Allocation beyond it fails (``MemoryError``,
  ``malloc`` returning NULL) instead of an OOM kill. It is stricter than a
  cgroup limit for programs that reserve much more address space than they
  touch (the JVM, Go, many threads' malloc arenas).
- **runAsUser** switches uid and gid (gid = uid, no supplementary groups)
  after mounting; it needs the daemon to run as root, unless it asks for the
  daemon's own uid. The run directory and volumes must be accessible to that
  user: this module does not chown them.
- **Process group**: the step leads its own session, so ``terminate()``
  reaches its whole tree. When the step's main process ends, whatever it left
  running in its group is killed, as a container runtime does when PID 1
  exits: a stray background job can neither outlive the run nor hold the log
  open.
- **Log**: stdout and stderr merged into one file, secret values replaced by
  ``[REDACTED]``, capped at ``log_limit_bytes``; past the cap the output is
  still read (and dropped) so the step never blocks on a full pipe.

No thread per step: one I/O thread per daemon watches every step's output
pipe and its pidfd (a Linux process descriptor that becomes readable when the
process exits) in one selector. It writes the logs, reaps each step the
moment it ends, and runs the callbacks that report it; nothing polls.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import marshal
import os
import posixpath
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.adapters.local import launcher
from reconciler.ports import TerminalError

log = logging.getLogger(__name__)
LAUNCHER = Path(launcher.__file__)
REDACTED = b"[REDACTED]"
MIN_REDACTED_LENGTH = 4  # shorter values would mangle the log (think "1" or "true")
DEFAULT_LOG_LIMIT = 10 * 1024 * 1024
READ_CHUNK = 64 * 1024
DRAIN_GRACE = 5.0  # seconds the log may stay open after the step's group is gone


@dataclass(frozen=True)
class Mount:
    """A host directory shown to the step at ``target``."""

    source: Path  # a directory on the host (created by the caller)
    target: str  # absolute path the step sees, e.g. /workspace
    read_only: bool = False

    def __post_init__(self) -> None:
        if not posixpath.isabs(self.target) or posixpath.normpath(self.target) == "/":
            raise ValueError(f"mount target {self.target!r} must be an absolute path below /")


@dataclass(frozen=True)
class ProcessSpec:
    """Everything needed to run one step; ``env`` and ``redact`` never show in repr."""

    argv: tuple[str, ...]  # command + arguments; run as-is, never through a shell we add
    env: Mapping[str, str] = field(repr=False)  # the complete environment of the step
    cwd: Path  # per-run working directory (exists)
    log_path: Path  # stdout+stderr, merged, written here
    mounts: tuple[Mount, ...] = ()
    memory_limit_bytes: int | None = None  # RLIMIT_AS, see the module docstring
    run_as_user: int | None = None  # uid (and gid); needs root unless it is our own uid
    log_limit_bytes: int = DEFAULT_LOG_LIMIT
    redact: frozenset[str] = field(default=frozenset(), repr=False)  # secret values

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError("a step needs a command (argv must not be empty)")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError(f"memory limit must be positive, not {self.memory_limit_bytes}")
        if self.run_as_user is not None and self.run_as_user < 0:
            raise ValueError(f"run_as_user must be a uid >= 0, not {self.run_as_user}")
        if self.log_limit_bytes < 0:
            raise ValueError(f"log limit must be >= 0, not {self.log_limit_bytes}")


class StepStartError(TerminalError):
    """The step could not start; the message says why and what to do."""


@dataclass(frozen=True)
class LaunchFailure:
    """What the launcher reported before it could exec the step."""

    kind: str  # namespace | mkdir | mount | readonly | memory | user | cwd | exec | internal
    errno: int | None = None
    path: str = ""
    detail: str = ""


class StepProcess:
    """A running step: its exit code, its log, and a way to stop it.

    No thread of its own: the shared step I/O thread (``_Reactor``) drains its
    output into the log and reaps it, then runs the done callbacks.
    """

    def __init__(self, popen: subprocess.Popen[bytes], output_fd: int, log: _Log) -> None:
        self._popen = popen
        self._output_fd = output_fd  # read end of the step's stdout+stderr pipe (ours)
        self._log = log
        self._pidfd: int | None = None
        self._code: int | None = None
        self._log_open = True
        self._exited = threading.Event()  # reaped, its group killed
        self._done = threading.Event()  # reaped and the log closed
        self._callbacks: list[Callable[[StepProcess], None]] = []
        self._lock = threading.Lock()
        self._reactor: _Reactor | None = None
        self.pid = popen.pid

    def __repr__(self) -> str:
        return f"StepProcess(pid={self.pid}, returncode={self._popen.returncode})"

    def poll(self) -> int | None:
        """The exit code once the step and its log are done (negative: killed by signal)."""
        return self._code if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the step ended and its log is written; None on timeout."""
        return self._code if self._done.wait(timeout) else None

    def add_done_callback(self, callback: Callable[[StepProcess], None]) -> None:
        """Call ``callback(self)`` once the step ended and its log is written.

        It runs on the step I/O thread (at once, here, when the step is done
        already), so it must be quick and must not wait for other steps.
        """
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def terminate(self, *, grace: float = 10.0) -> None:
        """SIGTERM to the step's process group; SIGKILL to it after grace seconds."""
        if not self._exited.is_set():
            self._signal_group(signal.SIGTERM)
            if not self._exited.wait(grace):
                self._signal_group(signal.SIGKILL)
                self._exited.wait()

    @property
    def log_bytes(self) -> int:
        """Bytes written to the log file so far (the truncation line included)."""
        return self._log.written

    @property
    def log_truncated(self) -> bool:
        return self._log.truncated

    @property
    def log_error(self) -> str | None:
        """Why the log could not be written (disk full...), if it could not."""
        return self._log.error

    def _signal_group(self, signum: int) -> None:
        # ProcessLookupError: the whole group has exited already, nothing to signal.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    # -- on the step I/O thread ------------------------------------------------

    def _watch(self, reactor: _Reactor) -> None:
        """Hand the output pipe and the exit to the reactor (called once, at start)."""
        self._reactor = reactor
        os.set_blocking(self._output_fd, False)
        reactor.watch(self._output_fd, self._on_output)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a thread reaps
            self._reap_in_thread()
        else:
            reactor.watch(self._pidfd, self._on_pidfd)

    def _on_output(self) -> None:
        try:
            chunk = os.read(self._output_fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as error:
            self._log.error = self._log.error or f"cannot read the step output: {error.strerror}"
            chunk = b""
        if chunk:
            self._log.feed(chunk)
        else:
            self._close_log()

    def _on_pidfd(self) -> None:
        assert self._reactor is not None
        assert self._pidfd is not None
        code = self._popen.poll()  # the pidfd is readable: it has exited, this reaps it
        if code is None:  # not yet (a stale event): the pidfd reports the exit again
            return
        try:
            self._reactor.unwatch(self._pidfd)
            os.close(self._pidfd)
        finally:
            self._pidfd = None
            self._exit_with(code)

    def _reap_in_thread(self) -> None:
        threading.Thread(target=self._wait_for_exit, name=f"step-{self.pid}", daemon=True).start()

    def _wait_for_exit(self) -> None:
        code = self._popen.wait()
        assert self._reactor is not None
        self._reactor.call_soon(lambda: self._exit_with(code), owner=self)

    def _exit_with(self, code: int) -> None:
        """The main process exited: kill what it left in its group, bound the drain.

        The main process is reaped by now, so its pid could in theory be reused;
        the kernel keeps a pid in use while it names a live process group, so
        only an empty group's id could be taken, and pids are handed out in
        order: reuse within these microseconds would need a full wrap.
        """
        self._code = code
        try:
            self._signal_group(signal.SIGKILL)
            if self._log_open and self._reactor is not None:
                self._reactor.drain_until(self, time.monotonic() + DRAIN_GRACE)
        finally:
            self._exited.set()
            self._maybe_done()

    def _close_log(self, line: bytes | None = None) -> None:
        if not self._log_open:
            return
        self._log_open = False
        try:
            if self._reactor is not None:
                self._reactor.stop_draining(self)
                self._reactor.unwatch(self._output_fd)
            os.close(self._output_fd)
            self._log.close(line)
        finally:
            self._maybe_done()  # whatever failed above, the step ends

    def _give_up_log(self) -> None:
        """The drain deadline passed: something outside the group holds the output."""
        self._close_log(b"[log closed: a process outside the step kept its output]")

    def _maybe_done(self) -> None:
        if self._log_open or not self._exited.is_set():
            return
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("a done callback of step process %s failed", self.pid)

    def _broken(self, error: BaseException) -> None:
        """A handler failed unexpectedly: give up the log, so the step still ends.

        (The exit is recorded whatever fails: see ``_on_pidfd`` and ``_exit_with``.)
        """
        self._log.error = self._log.error or f"cannot capture the step log: {error!r}"
        with contextlib.suppress(Exception):
            self._close_log()


def start_process(
    spec: ProcessSpec, *, made_log: Callable[[Path], int | None] | None = None
) -> StepProcess:
    """Start the step; raises StepStartError when it cannot start at all.

    made_log: gives a log file made ahead at that path (new, empty, open for
    writing), or None; the log is then created here.
    """
    user = _user_switch(spec.run_as_user)
    log_fd = made_log(spec.log_path) if made_log is not None else None
    if log_fd is None:
        log_fd = _open_log(spec.log_path)
    try:
        # The output pipe is made here and its read end kept as a bare descriptor: the
        # reactor reads it with os.read (the slow path it replaces: stdout=PIPE, which
        # wraps it in a buffered file object per step, unused).
        output_read, output_write = os.pipe()  # both close-on-exec in this process
        try:
            if spec.mounts or spec.memory_limit_bytes is not None or user is not None:
                popen, report_fd = _spawn_launcher(spec, user, output_write)
            else:
                popen, report_fd = _spawn_direct(spec, output_write), None
        except BaseException:
            os.close(output_read)
            raise
        finally:
            os.close(output_write)  # the step holds it now; EOF comes when its group is done
    except BaseException:
        os.close(log_fd)
        raise
    process = StepProcess(
        popen,
        output_read,
        _Log(log_fd, limit=spec.log_limit_bytes, redactor=_Redactor(spec.redact)),
    )
    process._watch(_reactor())
    if report_fd is not None:
        failure = _read_report(report_fd)
        if failure is not None:
            process.wait()
            raise StepStartError(
                describe_launch_failure(failure, spec=spec, user=user, euid=os.geteuid())
            )
    return process


def _user_switch(run_as_user: int | None) -> int | None:
    """The uid to switch to, or None when the step runs as the daemon's own user."""
    euid = os.geteuid()
    if run_as_user is None or run_as_user == euid:
        return None
    if euid != 0:
        raise StepStartError(
            f"runAsUser {run_as_user} needs the daemon to run as root (it runs as uid "
            f"{euid}): run the daemon as root, or remove runAsUser from the step"
        )
    return run_as_user


def _open_log(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StepStartError(
            f"cannot open the step log {path}: {error.strerror}; check the run directory"
        ) from error


def _spawn_direct(spec: ProcessSpec, output: int) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            spec.argv,
            env=spec.env,
            cwd=spec.cwd,
            start_new_session=True,
            stdin=_devnull(),
            stdout=output,
            stderr=output,
        )
    except OSError as error:
        # Popen names the failing path: the working directory, or the command.
        cwd_failed = error.filename is not None and Path(error.filename) == spec.cwd
        failure = LaunchFailure(
            kind="cwd" if cwd_failed else "exec",
            errno=error.errno,
            path=str(spec.cwd) if cwd_failed else spec.argv[0],
            detail=error.strerror or str(error),
        )
        raise StepStartError(
            describe_launch_failure(failure, spec=spec, user=None, euid=os.geteuid())
        ) from error


def _spawn_launcher(
    spec: ProcessSpec, user: int | None, output: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start launcher.py; returns it and the read end of its report pipe."""
    report_read, report_write = os.pipe()  # both close-on-exec in this process
    config = {
        "report_fd": report_write,
        "cwd": str(spec.cwd.absolute()),
        "lc_ctype": spec.env.get("LC_CTYPE"),
        "mounts": [
            {
                "source": str(mount.source.absolute()),
                "target": posixpath.normpath(mount.target),
                "read_only": mount.read_only,
            }
            for mount in spec.mounts
        ],
        "memory_limit_bytes": spec.memory_limit_bytes,
        "run_as_user": user,
    }
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), launcher.encode(config), *spec.argv],
            env=spec.env,  # secrets travel in the environment, never in argv
            start_new_session=True,
            stdin=_devnull(),
            stdout=output,
            stderr=output,
            pass_fds=(report_write,),
        )
    except OSError as error:
        os.close(report_read)
        raise StepStartError(
            f"cannot start the step launcher {sys.executable!r}: {error.strerror}"
        ) from error
    finally:
        os.close(report_write)
    return popen, report_read


_DEVNULL: int | None = None
_DEVNULL_LOCK = threading.Lock()


def _devnull() -> int:
    """/dev/null, opened once for every step's stdin (the slow path it replaces:
    stdin=DEVNULL, which opens and closes it again for each step)."""
    global _DEVNULL
    if _DEVNULL is None:
        with _DEVNULL_LOCK:
            if _DEVNULL is None:
                _DEVNULL = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # as DEVNULL opens it
    return _DEVNULL


def _read_report(report_fd: int) -> LaunchFailure | None:
    """None when the launcher exec'd the step (EOF, nothing written), else its report."""
    data = b""
    try:
        while chunk := os.read(report_fd, READ_CHUNK):
            data += chunk
    finally:
        os.close(report_fd)
    if not data:
        return None
    try:
        report: dict[str, Any] = marshal.loads(data)
        return LaunchFailure(
            kind=str(report["kind"]),
            errno=report["errno"],
            path=str(report["path"]),
            detail=str(report["detail"]),
        )
    except (ValueError, EOFError, KeyError, TypeError):
        return LaunchFailure(kind="internal", detail=f"unreadable report {data[:200]!r}")


def describe_launch_failure(
    failure: LaunchFailure, *, spec: ProcessSpec, user: int | None, euid: int
) -> str:
    """The message a user sees when a step could not start, with what to do about it."""
    reason = os.strerror(failure.errno) if failure.errno else failure.detail
    if failure.kind == "namespace":
        if failure.errno == errno.EPERM and euid != 0:
            return (
                "cannot create a mount namespace (not root and user namespaces not "
                "allowed): volumes on the local backend need root; run the daemon as "
                "root, allow unprivileged user namespaces, or remove use.volumes from the step"
            )
        if failure.errno == errno.EPERM:
            return (
                "cannot create a mount namespace (root without CAP_SYS_ADMIN, and user "
                "namespaces not allowed): volumes on the local backend need root with "
                "CAP_SYS_ADMIN (in a container: --cap-add SYS_ADMIN), or remove "
                "use.volumes from the step"
            )
        return f"cannot create a mount namespace for the step's volumes: {reason}"
    if failure.kind == "mkdir":
        return (
            f"cannot create the volume directory {failure.path} on this host ({reason}): "
            "create it once as root, or mount the volume at another directory"
        )
    if failure.kind == "mount":
        source = _mount_source(spec, failure.path)
        return f"cannot mount volume {source} at {failure.path}: {reason}"
    if failure.kind == "readonly":
        return f"cannot make the volume at {failure.path} read-only: {reason}"
    if failure.kind == "memory":
        return f"cannot set the memory limit ({spec.memory_limit_bytes} bytes): {reason}"
    if failure.kind == "user":
        return f"cannot run the step as uid {failure.path}: {reason}"
    if failure.kind == "cwd":
        who = f" to uid {user}" if user is not None else ""
        return (
            f"cannot enter the working directory {failure.path} ({reason}): it must exist "
            f"and be accessible{who}"
        )
    if failure.kind == "exec":
        return _command_problem(spec.argv[0], failure.errno, path=spec.env.get("PATH"))
    return f"the step launcher failed before starting the step: {failure.detail}"


def _mount_source(spec: ProcessSpec, target: str) -> str:
    for mount in spec.mounts:
        if posixpath.normpath(mount.target) == target:
            return str(mount.source)
    return "?"


def _command_problem(command: str, code: int | None, *, path: str | None) -> str:
    if code == errno.ENOENT:
        if "/" in command:
            return f"command {command!r} not found: no such file (relative to the run directory)"
        search = path if path is not None else f"{os.defpath} (no PATH in the environment)"
        return (
            f"command {command!r} not found on PATH {search}: install it where the "
            "daemon runs, or give its full path in the step's command"
        )
    if code in (errno.EACCES, errno.EPERM):
        return f"command {command!r} is not executable (permission denied): chmod +x it"
    if code == errno.ENOEXEC:
        return f"command {command!r} is not a program this host can run (a script needs #!)"
    reason = os.strerror(code) if code else "unknown error"
    return f"command {command!r} could not start: {reason}"


class _Redactor:
    """Replaces secret values in a byte stream that arrives in arbitrary chunks.

    ``feed`` holds back the last ``longest - 1`` bytes of what it has seen, so a
    secret split between two chunks is still found: a value that reaches past
    the end of the data can only start inside that held-back tail.
    """

    def __init__(self, values: frozenset[str]) -> None:
        kept = sorted(
            {value.encode() for value in values if len(value) >= MIN_REDACTED_LENGTH},
            key=len,
            reverse=True,  # longest first, so a value containing another wins
        )
        self._pattern = re.compile(b"|".join(re.escape(value) for value in kept)) if kept else None
        self._hold = max((len(value) for value in kept), default=1) - 1

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(redacted bytes safe to write, bytes to prepend to the next chunk)."""
        if self._pattern is None:
            return data, b""
        cut = max(0, len(data) - self._hold)
        for match in self._pattern.finditer(data):
            if match.start() >= cut:
                break
            if match.end() > cut:
                cut = match.end()  # never split a found value
                break
        return self._pattern.sub(REDACTED, data[:cut]), data[cut:]

    def finish(self, data: bytes) -> bytes:
        return data if self._pattern is None else self._pattern.sub(REDACTED, data)


class _Log:
    """The step's log file: its output redacted and capped; past the cap it is dropped."""

    def __init__(self, log_fd: int, *, limit: int, redactor: _Redactor) -> None:
        self._log_fd = log_fd
        self._limit = limit
        self._redactor = redactor
        self._pending = b""
        self._last_byte = b"\n"
        self.written = 0
        self.truncated = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        ready, self._pending = self._redactor.feed(self._pending + chunk)
        self._write(ready)

    def close(self, line: bytes | None = None) -> None:
        try:
            if line is not None:
                self._write_line(line)
            self._write(self._redactor.finish(self._pending))
            self._pending = b""
        finally:
            os.close(self._log_fd)

    def _write(self, data: bytes) -> None:
        if not data or self.truncated or self.error is not None:
            return
        room = self._limit - self.written
        if len(data) > room:
            self._emit(data[:room])
            self._write_line(f"[log truncated at {self._limit} bytes]".encode())
            self.truncated = True
            return
        self._emit(data)

    def _write_line(self, line: bytes) -> None:
        prefix = b"" if self._last_byte == b"\n" else b"\n"
        self._emit(prefix + line + b"\n")

    def _emit(self, data: bytes) -> None:
        if not data or self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                count = os.write(self._log_fd, view)
                self.written += count
                view = view[count:]
        except OSError as error:  # keep draining so the step never blocks; report it
            self.error = f"cannot write the step log: {error.strerror}"
            return
        self._last_byte = data[-1:]


class _Reactor:
    """One thread for every running step: drains output pipes into logs, reaps exits.

    A step's output pipe and its pidfd are watched in one selector, so a step
    costs no thread of its own and its end is seen the moment it happens.
    ``watch`` and ``call_soon`` may be called from any thread; everything
    else runs on the reactor's thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._selector = selectors.DefaultSelector()
        # Other selectors pass their fd list to the kernel per call: wake them to add one.
        self._wake_on_watch = not isinstance(self._selector, selectors.EpollSelector)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._calls: collections.deque[tuple[Callable[[], None], StepProcess]] = collections.deque()
        self._draining: dict[StepProcess, float] = {}  # deadline of each open log
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._handlers[self._wake_read] = self._run_calls
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="step-io", daemon=True)
        self._thread.start()

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._selector.register(fd, selectors.EVENT_READ)
        if self._wake_on_watch:
            self._wake()

    def unwatch(self, fd: int) -> None:
        self._selector.unregister(fd)
        self._handlers.pop(fd, None)

    def call_soon(self, call: Callable[[], None], *, owner: StepProcess) -> None:
        self._calls.append((call, owner))
        self._wake()

    def drain_until(self, process: StepProcess, deadline: float) -> None:
        self._draining[process] = deadline

    def stop_draining(self, process: StepProcess) -> None:
        self._draining.pop(process, None)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_write, b"\0")

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, READ_CHUNK)
        while self._calls:
            call, owner = self._calls.popleft()
            self._guarded(call, owner)

    def _run(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:  # the thread must live on: every running step needs it
                log.exception("the step I/O thread failed; going on")
                time.sleep(0.1)  # not in a hot loop should the failure repeat

    def _turn(self) -> None:
        timeout = None
        if self._draining:
            timeout = max(0.0, min(self._draining.values()) - time.monotonic())
        for key, _ in self._selector.select(timeout):
            handler = self._handlers.get(key.fd)
            if handler is not None:
                self._guarded(handler)
        if self._draining:
            now = time.monotonic()
            for process, deadline in list(self._draining.items()):
                if now >= deadline:
                    self._guarded(process._give_up_log)

    @staticmethod
    def _guarded(call: Callable[[], None], owner: object = None) -> None:
        """Run a step's handler; should it fail, that step still ends, the others go on."""
        try:
            call()
        except Exception as error:
            log.exception("step I/O failed")
            owner = owner or getattr(call, "__self__", None)
            if isinstance(owner, StepProcess):
                owner._broken(error)


_REACTOR: _Reactor | None = None
_REACTOR_LOCK = threading.Lock()


def _reactor() -> _Reactor:
    """The process's step I/O thread, started on first use (and anew in a forked child)."""
    global _REACTOR
    reactor = _REACTOR
    if reactor is not None and reactor.pid == os.getpid():
        return reactor
    with _REACTOR_LOCK:
        if _REACTOR is None or _REACTOR.pid != os.getpid():
            _REACTOR = _Reactor()
        return _REACTOR
