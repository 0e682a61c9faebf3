"""Steps of the local backend as local processes: the ``StepRunner`` of the embedded backend.

Layout under the state directory::

    volumes/<volume id>/                   a volume, shared by every step that mounts it
    runs/<workspace>/<run id>/<step>/      the step's working directory
    runs/<workspace>/<run id>/<step>.log   its stdout and stderr (size-capped, secrets redacted)

A step runs ``command + arguments`` (the ``container`` stack; the image is
recorded, not pulled) with an environment built from scratch: a minimal
``PATH``/``HOME``/``LANG``, the stack's ``env``, then the projections with
their templates rendered (secrets from the local secret store). Nothing of
the daemon's own environment (credentials!) leaks into a step.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import threading
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

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
        run_dir = self.state_dir.joinpath("runs", run.workspace, run.run_id)
        step_dir = run_dir / name  # step_dir_path
        _make_step_dir(step_dir)
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
        process = start_process(process_spec)  # StepStartError is a TerminalError
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
