"""Steps of the local backend as local processes: the ``StepRunner`` of the embedded backend.

Layout under the state directory::

    volumes/<volume id>/                   a volume, shared by every step that mounts it
    runs/<workspace>/<run id>/<step>/      the step's working directory
    runs/<workspace>/<run id>/<step>.log   its stdout and stderr (size-capped, secrets redacted)

    runs/.spare-<pid>-<n>/                 directories made ahead for steps to come (see _Spares)

A step runs ``command + arguments`` (the ``container`` stack; the image is
recorded, not pulled) with an environment built from scratch: a minimal
``PATH``/``HOME``/``LANG``, the stack's ``env``, then the projections with
their templates rendered (secrets from the local secret store). Nothing of
the daemon's own environment (credentials!) leaks into a step.
"""

from __future__ import annotations

import atexit
import errno
import functools
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.adapters.local.processes import (
    Mount,
    ProcessSpec,
    StepProcess,
    start_process,
)
from reconciler.adapters.local.secrets import SecretStore
from reconciler.core.names import RunId
from reconciler.core.quantities import memory_bytes
from reconciler.core.templates import DefaultRef, SecretRef, TemplateRef, render_template
from reconciler.ports import Clock, StepLaunch, StepResult, TerminalError

log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPARES = 4  # step directories and log files kept made ahead (see _Spares)
SPARES_FROM = 0.25e-3  # CPU seconds a new directory costs (on average) when they start
SPARES_UNTIL = 0.1e-3  # ... and when they stop again
SPARES_RETRY = 10.0  # seconds before making spares again after a failure
_O_TMPFILE: int | None = getattr(os, "O_TMPFILE", None)  # Linux: files made without a name
_Key = tuple[str, str, str]


def step_dir_path(state_dir: Path, workspace: str, run_id: str, step: str) -> Path:
    return state_dir.joinpath("runs", workspace, run_id, step)


def step_log_path(state_dir: Path, workspace: str, run_id: str, step: str) -> Path:
    return state_dir.joinpath("runs", workspace, run_id, f"{step}.log")


class LocalStepRunner:
    steps_outlive_daemon = False  # a restarted daemon fails their runs and stops orphans

    def __init__(
        self,
        state_dir: Path,
        *,
        secrets: SecretStore,
        clock: Clock,
        path: str = DEFAULT_PATH,
        log_limit_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.state_dir = state_dir
        self.secrets = secrets
        self.clock = clock
        self.path = path
        self.log_limit_bytes = log_limit_bytes
        self._results: queue.SimpleQueue[StepResult] = queue.SimpleQueue()
        self._processes: dict[_Key, StepProcess] = {}
        self._lock = threading.Lock()
        self._spares: _Spares | None = None  # started once new directories prove slow
        self._mkdir_cost = 0.0  # CPU seconds per new step directory, a moving average
        self._started_any = False

    # -- StepRunner --------------------------------------------------------------

    def start(self, launch: StepLaunch) -> int | None:
        run, name = launch.run, launch.step
        spec: Mapping[str, Any] = run.dag_entry(name).get("spec") or {}
        stack_spec: Mapping[str, Any] = spec.get("stackSpec") or {}
        command = stack_spec.get("command")
        if not command:
            raise TerminalError(
                f"step {name!r} has no stackSpec.command: the local backend runs command + "
                "arguments and cannot run an image's entrypoint; add command"
            )
        env = {
            "PATH": self.path,
            "LANG": "C.UTF-8",
            "HOME": "",
            **{str(k): str(v) for k, v in (stack_spec.get("env") or {}).items()},
        }
        redact: set[str] = set()
        if launch.environment.variables:
            env.update(self._render(launch, redact))
        if not self._started_any:  # spares a daemon killed on a slow disk left behind
            self._started_any = True
            _remove_dead_spares(self.state_dir / "runs")
        spares = self._spares
        if spares is not None and spares.pid != os.getpid():  # a forked child's: its parent's
            spares = None
        run_dir = self.state_dir.joinpath("runs", run.workspace, run.run_id)
        step_dir = run_dir / name  # step_dir_path
        if spares is None or not spares.take_dir(step_dir):
            began = time.thread_time()
            _make_step_dir(step_dir)
            self._mkdir_took(time.thread_time() - began)
        env["HOME"] = str(step_dir)
        user = spec.get("runAsUser")
        if user is not None and os.geteuid() == 0:
            os.chown(step_dir, user, user)  # the step's own working directory is its to write
        mounts = []
        for volume in (spec.get("use") or {}).get("volumes") or ():
            source = self.state_dir / "volumes" / str(volume["id"])
            if not source.exists():
                source.mkdir(parents=True)
                if user is not None and os.geteuid() == 0:
                    os.chown(source, user, user)  # a new volume belongs to its first user
            mounts.append(Mount(source, str(volume["directory"]), bool(volume.get("readOnly"))))
        limits = (spec.get("resources") or {}).get("limits") or {}
        working_dir = stack_spec.get("workingDir")
        arguments = stack_spec.get("arguments")
        process_spec = ProcessSpec(
            argv=(*command, *(str(a) for a in arguments)) if arguments else tuple(command),
            env=env,
            cwd=Path(working_dir) if working_dir else step_dir,
            log_path=run_dir / f"{name}.log",  # step_log_path
            mounts=tuple(mounts),
            memory_limit_bytes=memory_bytes(limits["memory"]) if limits.get("memory") else None,
            run_as_user=user,
            log_limit_bytes=self.log_limit_bytes,
            redact=frozenset(v for v in redact if len(v) >= 4),
        )
        # StepStartError is a TerminalError.
        process = start_process(process_spec, made_log=None if spares is None else spares.take_log)
        key: _Key = (run.workspace, str(run.run_id), name)
        with self._lock:
            self._processes[key] = process
        # No thread per step: the step I/O thread reports the end, log written, at once.
        process.add_done_callback(functools.partial(self._finished, key))
        return process.pid

    def _render(self, launch: StepLaunch, redact: set[str]) -> dict[str, str]:
        """The step's projected env vars, templates rendered; secret values go to redact."""
        values: dict[str, str] = {}
        secret_cache: dict[str, dict[str, str]] = {}

        def resolve(ref: TemplateRef) -> str:
            if isinstance(ref, DefaultRef):
                return launch.defaults[ref.key]
            assert isinstance(ref, SecretRef)
            secret_id = launch.environment.secrets[ref.alias]
            if secret_id not in secret_cache:
                secret_cache[secret_id] = self.secrets.get(secret_id)
            data = secret_cache[secret_id]
            if ref.key not in data:
                raise TerminalError(
                    f"secret {secret_id!r} has no key {ref.key!r}; set it with: "
                    f"reconciler secret set {secret_id} {ref.key}=..."
                )
            redact.add(data[ref.key])
            return data[ref.key]

        for env_key, template in launch.environment.variables:
            values[env_key] = render_template(template, resolve)
        for data in secret_cache.values():
            redact.update(v for v in data.values() if v)
        return values

    def close(self) -> None:
        """Remove the spare directories and files (also done when the process exits)."""
        if self._spares is not None:
            self._spares.close()

    def _mkdir_took(self, cpu_seconds: float) -> None:
        """Start (or wake) the spares once step directories cost more than SPARES_FROM."""
        self._mkdir_cost = 0.8 * self._mkdir_cost + 0.2 * cpu_seconds
        if self._mkdir_cost < SPARES_FROM:
            return
        spares = self._spares
        if spares is None or spares.pid != os.getpid():  # the first time, or a forked child
            self._spares = _Spares(self.state_dir / "runs")
        else:
            spares.resume()
        self._mkdir_cost = 0.0  # measured again should the spares pause

    def _finished(self, key: _Key, process: StepProcess) -> None:
        code = process.poll()
        with self._lock:
            self._processes.pop(key, None)
        reason = "" if code == 0 else _exit_reason(code)
        workspace, run_id, step_name = key
        self._results.put(
            StepResult(workspace, RunId(run_id), step_name, code, reason, self.clock.now())
        )

    def stop(self, workspace: str, run_id: str, step: str) -> None:
        with self._lock:
            process = self._processes.get((workspace, run_id, step))
        if process is not None:
            threading.Thread(target=process.terminate, daemon=True).start()

    def wait_results(self, timeout: float) -> list[StepResult]:
        results: list[StepResult] = []
        try:
            results.append(
                self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
            )
        except queue.Empty:
            return results
        while True:
            try:
                results.append(self._results.get_nowait())
            except queue.Empty:
                return results

    def volume_exists(self, workspace: str, volume_id: str) -> bool:
        """Volumes are shared by every workspace on the local backend."""
        return (self.state_dir / "volumes" / volume_id).is_dir()

    def reattach(self, workspace: str, run_id: str, step: str) -> bool:
        """A local step dies with its daemon (``stop_orphan`` ends what is left): never."""
        return False

    def stop_orphan(self, workspace: str, run_id: str, step: str, pid: int) -> bool:
        """Kill the process group of a step a dead daemon left behind.

        The pid may have been reused since: the process is only killed when its
        environment's HOME is that step's directory (set by ``start``).
        """
        home = str(step_dir_path(self.state_dir, workspace, run_id, step))
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        if f"HOME={home}".encode() not in environ:
            return False
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def read_log(self, workspace: str, run_id: str, step: str) -> bytes | None:
        path = step_log_path(self.state_dir, workspace, run_id, step)
        return path.read_bytes() if path.is_file() else None


class _Spares:
    """Step directories and log files made ahead, by a thread of their own, while steps run.

    A step start needs a new directory and a new log file. Most filesystems make
    them in microseconds, some do not: ext4 without a journal scans past every
    inode freed in the last minutes to allocate one (up to a millisecond each on
    a disk where files come and go), a network filesystem pays round trips. A
    chain of short steps would wait for that at every start. So this thread
    keeps a few ready: empty directories in ``runs/.spare-<pid>-<n>/``, which a
    start renames to the step's directory, and unnamed files (``O_TMPFILE``) in
    ``runs/``, which a start links to the step's log name. Making them in the
    start (``mkdir``, ``open(O_CREAT)``) is the slow path they replace; it stays
    the fallback whenever none is ready, the name is taken, or the filesystem
    cannot do this.

    Where making them is fast, spares cost more than they save (a second thread,
    a rename and a link instead of a mkdir and an open): the runner starts them
    only once new step directories cost SPARES_FROM of CPU time on average, and
    the thread pauses once its own cost falls under SPARES_UNTIL, until the
    runner finds the starts slow again. The spares are removed when the process
    exits; those of a process that died, by the first start of the next runner.
    """

    _numbers = itertools.count(1)

    def __init__(self, runs_dir: Path, *, keep: int = SPARES) -> None:
        self.pid = os.getpid()
        self._runs_dir = runs_dir
        self._dir = runs_dir / f".spare-{self.pid}-{next(self._numbers)}"
        self._keep = keep
        self._dirs: list[Path] = []
        self._logs: list[int] = []
        self._names = itertools.count(1)
        self._closed = False
        self._active = True  # making spares; paused while the filesystem is fast
        self._cost = SPARES_FROM  # CPU seconds per spare directory, a moving average
        self._cond = threading.Condition()
        self._fds_dir: int | None = None  # /proc/self/fd: unnamed files are linked from there
        self._tmpfile = _O_TMPFILE
        if self._tmpfile is not None:
            try:
                self._fds_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
            except OSError as error:
                log.info("step log files are made at each start: no /proc/self/fd (%s)", error)
        self._logs_on = self._fds_dir is not None
        runs_dir.mkdir(parents=True, exist_ok=True)  # as a start would; the thread makes no parents
        _remove_dead_spares(runs_dir)
        atexit.register(self.close)
        threading.Thread(target=self._run, name="step-spares", daemon=True).start()

    def take_dir(self, target: Path) -> bool:
        """Rename a spare directory to ``target``; False when there is none or it cannot be."""
        with self._cond:
            spare = self._dirs.pop() if self._dirs else None
            self._refill_if_low()
        if spare is None:
            return False
        try:
            try:
                os.rename(spare, target)
            except FileNotFoundError:  # the run's first step: make its directory
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(spare, target)
        except OSError:  # the name is taken (or the spare is gone): _make_step_dir decides
            _remove_spare_dir(spare)
            return False
        return True

    def take_log(self, path: Path) -> int | None:
        """A spare file linked at ``path``, open for writing; None when there is none or the
        name is taken (the caller creates or truncates it then, as without spares)."""
        with self._cond:
            fd = self._logs.pop() if self._logs else None
            self._refill_if_low()
        if fd is None:
            return None
        try:
            # linkat(AT_SYMLINK_FOLLOW) through /proc names an O_TMPFILE file without
            # privileges (os.link without a dir fd would link the symlink itself).
            os.link(str(fd), path, src_dir_fd=self._fds_dir, follow_symlinks=True)
        except FileExistsError:
            self._keep_log(fd)
            return None
        except OSError as error:  # another filesystem below runs/, say: stop making them
            os.close(fd)
            log.info("step log files are made at each start: cannot link one (%s)", error)
            self._stop_logs()
            return None
        return fd

    def resume(self) -> None:
        """Make spares again: starts found new directories slow."""
        with self._cond:
            if not self._active:
                self._active = True
                self._cost = SPARES_FROM
                self._cond.notify_all()

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked child: the spares are its parent's
            return
        with self._cond:
            self._closed = True
            dirs, self._dirs = self._dirs, []
            logs, self._logs = self._logs, []
            fds_dir, self._fds_dir = self._fds_dir, None
            self._cond.notify_all()
        for spare in dirs:
            _remove_spare_dir(spare)
        for fd in logs:
            os.close(fd)
        if fds_dir is not None:
            os.close(fds_dir)
        self._remove_holder()
        atexit.unregister(self.close)

    def _remove_holder(self) -> None:
        try:
            os.rmdir(self._dir)
        except FileNotFoundError:
            pass
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                log.warning("cannot remove the spare step directories %s: %s", self._dir, error)
            # Not empty: the spares thread is making one; it removes both once it sees closed.

    # -- on the spares thread -----------------------------------------------------

    def _refill_if_low(self) -> None:
        """Wake the thread once half the spares are gone (not at every take). Holds _cond."""
        if self._low():
            self._cond.notify_all()

    def _low(self) -> bool:
        low = self._keep // 2
        return self._active and (
            len(self._dirs) <= low or (self._logs_on and len(self._logs) <= low)
        )

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug: seen in the log; from now on the starts make their own
            log.exception("the step spares thread failed; steps make their directories again")
            self.close()

    def _serve(self) -> None:
        while True:
            with self._cond:
                # Asleep until half the spares are taken, then all are made again: one
                # wake-up for several starts, not one per start.
                while not self._closed and not self._low():
                    self._cond.wait()
                if self._closed:
                    return
            self._fill()

    def _fill(self) -> None:
        while True:
            with self._cond:
                if self._closed or not self._active:
                    return
                want_dir = len(self._dirs) < self._keep
                want_log = self._logs_on and len(self._logs) < self._keep
            if not want_dir and not want_log:
                return
            try:
                if want_dir:
                    self._make_dir()
                if want_log:
                    self._make_log()
            except OSError as error:  # the start path meets (and reports) the same problem
                log.warning(
                    "cannot make spare step directories or log files under %s (%s); "
                    "trying again in %.0f s",
                    self._runs_dir,
                    error,
                    SPARES_RETRY,
                )
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, SPARES_RETRY)
                return

    def _make_dir(self) -> None:
        spare = self._dir / str(next(self._names))
        began = time.thread_time()
        try:
            os.mkdir(spare)
        except FileNotFoundError:  # the first spare: make runs/.spare-<pid>-<n> (not runs/)
            os.mkdir(self._dir)
            os.mkdir(spare)
        self._cost = 0.8 * self._cost + 0.2 * (time.thread_time() - began)
        with self._cond:
            if self._cost < SPARES_UNTIL:  # fast again: the starts make their own
                self._active = False
            if not self._closed:
                self._dirs.append(spare)
                self._cond.notify_all()  # for whoever waits to see them (tests)
                return
        _remove_spare_dir(spare)
        self._remove_holder()

    def _make_log(self) -> None:
        assert self._tmpfile is not None  # _logs_on
        try:
            fd = os.open(self._runs_dir, self._tmpfile | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            log.info("step log files are made at each start: no unnamed files here (%s)", error)
            self._stop_logs()
            return
        self._keep_log(fd)

    def _keep_log(self, fd: int) -> None:
        with self._cond:
            if not self._closed and self._logs_on and len(self._logs) < self._keep:
                self._logs.append(fd)
                self._cond.notify_all()  # for whoever waits to see them (tests)
                return
        os.close(fd)

    def _stop_logs(self) -> None:
        with self._cond:
            logs, self._logs = self._logs, []
            self._logs_on = False
        for fd in logs:
            os.close(fd)


def _remove_spare_dir(path: Path) -> None:
    """Remove an (empty) spare directory; one that is gone already is fine."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove the spare step directory %s: %s", path, error)


def _remove_dead_spares(runs_dir: Path) -> None:
    """Remove the spare directories that processes which died left in runs/."""
    try:
        entries = [entry for entry in os.scandir(runs_dir) if entry.name.startswith(".spare-")]
    except FileNotFoundError:
        return
    for entry in entries:
        pid = entry.name.removeprefix(".spare-").partition("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        holder = Path(entry.path)
        try:
            spares = list(holder.iterdir())
        except FileNotFoundError:
            continue
        for spare in spares:
            _remove_spare_dir(spare)
        _remove_spare_dir(holder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _make_step_dir(step_dir: Path) -> None:
    """``step_dir.mkdir(parents=True, exist_ok=True)``, in one system call once the run's
    directory exists (the slow path it replaces costs a pathlib round per step)."""
    try:
        os.mkdir(step_dir)
    except FileNotFoundError:  # the run's first step: make runs/<workspace>/<run id> too
        step_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        if not step_dir.is_dir():
            raise


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the step's process was lost"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"
