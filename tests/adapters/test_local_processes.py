"""Local step processes, on real processes, real mounts and real log files."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import reconciler
from reconciler.adapters.local import processes
from reconciler.adapters.local.processes import (
    REDACTED,
    LaunchFailure,
    Mount,
    ProcessSpec,
    StepProcess,
    StepStartError,
    _Redactor,
    describe_launch_failure,
    start_process,
)
from tests.conftest import EXAMPLES_REPO

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": PATH}
MiB = 1024 * 1024
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mount namespaces and setuid need root")


def make_spec(tmp_path: Path, *argv: str, **overrides: object) -> ProcessSpec:
    fields: dict[str, object] = {
        "argv": argv,
        "env": ENV,
        "cwd": tmp_path,
        "log_path": tmp_path / "step.log",
    }
    fields.update(overrides)
    return ProcessSpec(**fields)  # type: ignore[arg-type]


def run(spec: ProcessSpec) -> tuple[int, str]:
    process = start_process(spec)
    code = process.wait(timeout=60)
    assert code is not None, "the step did not finish in 60 s"
    return code, spec.log_path.read_text()


def process_gone(pid: int, *, timeout: float = 5.0) -> bool:
    """True when pid stops running (absent, or a zombie) within timeout: a kill is async."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return True
        if fields[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def wait_for_file(path: Path, *, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear in {timeout} s")


# --- the seed's example, unchanged ---------------------------------------------------


def seed_steps(name: str) -> list[tuple[str, tuple[str, ...]]]:
    """(step name, argv) of each step of an example workflow, exactly as written there."""
    manifest = yaml.safe_load((EXAMPLES_REPO / "workflows" / f"{name}.yaml").read_text())
    return [
        (
            step["name"],
            (*step["spec"]["stackSpec"]["command"], *step["spec"]["stackSpec"]["arguments"]),
        )
        for step in manifest["spec"]["dag"]
    ]


WorkspaceState = tuple[bool, list[str], bytes | None]


def host_workspace_state() -> WorkspaceState:
    """Whether the host's real /workspace exists, its listing, its raw/customers.json."""
    workspace = Path("/workspace")
    if not workspace.exists():
        return False, [], None
    customers = workspace / "raw" / "customers.json"
    listing = sorted(os.listdir(workspace))
    return True, listing, customers.read_bytes() if customers.exists() else None


@pytest.fixture
def host_workspace_before() -> Iterator[WorkspaceState]:
    before = host_workspace_state()
    yield before
    workspace = Path("/workspace")
    if not before[0] and workspace.is_dir() and not any(workspace.iterdir()):
        workspace.rmdir()  # the empty mount point the launcher created on the host


@needs_root
def test_customer_batch_pipeline_runs_unchanged(
    tmp_path: Path, host_workspace_before: WorkspaceState
) -> None:
    steps = seed_steps("customer-batch-pipeline")
    assert [name for name, _ in steps] == ["extract", "validate", "publish"]
    assert all(argv[:2] == ("sh", "-c") for _, argv in steps)
    shared = tmp_path / "volumes" / "shared"
    shared.mkdir(parents=True)
    logs: dict[str, str] = {}
    for name, argv in steps:
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        spec = ProcessSpec(
            argv=argv,
            env=ENV,
            cwd=run_dir,
            log_path=run_dir / "log",
            mounts=(Mount(source=shared, target="/workspace"),),
        )
        code, logs[name] = run(spec)
        assert code == 0, f"{name} failed: {logs[name]}"

    assert "validation passed" in logs["validate"]
    assert "publish complete" in logs["publish"]
    assert (shared / "raw" / "customers.json").read_text() == '{"customers": 42}\n'
    assert (shared / "published" / "customers.json").read_text() == '{"customers": 42}\n'
    existed, listing, customers = host_workspace_state()
    if host_workspace_before[0]:
        assert (existed, listing, customers) == host_workspace_before
    else:  # at most the empty mount point was left on the host
        assert listing == []
        assert customers is None


@needs_root
@pytest.mark.parametrize(
    ("read_only", "expect_code_zero", "expect_in_log"),
    [
        pytest.param(False, True, "written", id="read-write"),
        pytest.param(True, False, "Read-only file system", id="read-only"),
    ],
)
def test_volume_read_only(
    tmp_path: Path, read_only: bool, expect_code_zero: bool, expect_in_log: str
) -> None:
    source = tmp_path / "vol"
    source.mkdir()
    (source / "in.txt").write_text("hello\n")
    target = f"/tmp/reconciler-test-{os.getpid()}-{tmp_path.name}/data"
    spec = make_spec(
        tmp_path,
        "sh",
        "-c",
        f"cat {target}/in.txt && echo new > {target}/out.txt && echo written",
        mounts=(Mount(source=source, target=target, read_only=read_only),),
    )
    try:
        code, log = run(spec)
    finally:
        shutil.rmtree(Path(target).parent)
    assert (code == 0) is expect_code_zero
    assert log.startswith("hello\n")
    assert expect_in_log in log
    assert (source / "out.txt").exists() is not read_only


@needs_root
def test_nested_mounts_are_mounted_parent_first(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "file").write_text("inner\n")
    base = f"/tmp/reconciler-test-{os.getpid()}-{tmp_path.name}"
    spec = make_spec(
        tmp_path,
        "cat",
        f"{base}/outer/inner/file",
        # Given child first: mounting in this order would hide the inner mount.
        mounts=(
            Mount(source=inner, target=f"{base}/outer/inner"),
            Mount(source=outer, target=f"{base}/outer"),
        ),
    )
    try:
        code, log = run(spec)
    finally:
        shutil.rmtree(base)
    assert (code, log) == (0, "inner\n")


# --- limits and users ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expect_success"),
    [
        pytest.param(64 * MiB, False, id="64Mi-too-small"),
        pytest.param(1024 * MiB, True, id="1Gi-enough"),
    ],
)
def test_memory_limit(tmp_path: Path, limit: int, expect_success: bool) -> None:
    spec = make_spec(
        tmp_path,
        sys.executable,
        "-c",
        "b = bytearray(300 * 1024 * 1024); print('allocated', len(b))",
        memory_limit_bytes=limit,
    )
    code, log = run(spec)
    assert (code == 0) is expect_success, log
    assert ("allocated 314572800" in log) is expect_success
    assert ("MemoryError" in log) is not expect_success


@needs_root
def test_run_as_user(tmp_path: Path) -> None:
    # The step must be able to enter its run directory: pytest's tmp_path is 0700.
    with tempfile.TemporaryDirectory() as name:
        run_dir = Path(name)
        run_dir.chmod(0o755)
        spec = ProcessSpec(
            argv=("sh", "-c", "id -u; id -g; id -G"),
            env=ENV,
            cwd=run_dir,
            log_path=tmp_path / "step.log",
            run_as_user=65534,
        )
        code, log = run(spec)
    assert (code, log) == (0, "65534\n65534\n65534\n")


@needs_root
def test_run_as_user_that_cannot_enter_the_run_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    spec = make_spec(tmp_path, "true", run_as_user=65534)
    with pytest.raises(StepStartError, match=r"working directory .* accessible to uid 65534"):
        start_process(spec)


# --- the log -------------------------------------------------------------------------


def test_stdout_and_stderr_are_merged_in_order(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "echo out; echo err >&2; echo out2")
    assert run(spec) == (0, "out\nerr\nout2\n")


def test_log_is_capped_and_the_step_is_not_blocked(tmp_path: Path) -> None:
    limit = 64 * 1024
    spec = make_spec(
        tmp_path,
        "sh",
        "-c",
        "yes 0123456789abcdef | head -c 2097152; echo done >&2",
        log_limit_bytes=limit,
    )
    process = start_process(spec)
    code = process.wait(timeout=60)
    data = spec.log_path.read_bytes()
    marker = f"\n[log truncated at {limit} bytes]\n".encode()
    assert code == 0
    assert len(data) == limit + len(marker)
    assert data.endswith(marker)
    assert b"done" not in data
    assert process.log_bytes == len(data)
    assert process.log_truncated


CANARY = "canary-7f3a9c21-secret"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param('echo "token=$TOKEN"', "token=[REDACTED]\n", id="in-a-line"),
        pytest.param('printf %s "$TOKEN"', "[REDACTED]", id="tail-without-newline"),
        pytest.param(
            'printf %s "canary-7f3a"; sleep 0.2; printf "%s\\n" "9c21-secret"',
            "[REDACTED]\n",
            id="split-across-writes",
        ),
        pytest.param(
            'echo "$TOKEN$TOKEN"; echo "$TOKEN" >&2',
            "[REDACTED][REDACTED]\n[REDACTED]\n",
            id="twice",
        ),
        pytest.param('echo "x${TOKEN}y"', "x[REDACTED]y\n", id="inside-a-word"),
    ],
)
def test_secret_values_are_redacted(tmp_path: Path, script: str, expected: str) -> None:
    spec = make_spec(
        tmp_path,
        "sh",
        "-c",
        script,
        env={**ENV, "TOKEN": CANARY},
        redact=frozenset({CANARY, "abc"}),  # "abc": too short to redact
    )
    code, log = run(spec)
    assert code == 0
    assert log == expected
    assert CANARY.encode() not in spec.log_path.read_bytes()


@given(
    data=st.lists(st.sampled_from([b"se", b"cret", b"-long", b"x", b"\n", b"ab"])).map(b"".join),
    secrets=st.lists(st.sampled_from(["secret", "secret-long", "cret", "ab"]), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=8),
)
def test_redaction_does_not_depend_on_how_output_is_chunked(
    data: bytes, secrets: list[str], cuts: list[int]
) -> None:
    redactor = _Redactor(frozenset(secrets))
    written, pending = b"", b""
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        ready, pending = redactor.feed(pending + data[previous:cut])
        written += ready
        previous = cut
    written += redactor.finish(pending)
    whole = redactor.finish(data)
    assert written == whole
    for secret in secrets:
        if len(secret) >= 4:
            assert secret.encode() not in whole.replace(REDACTED, b"|")


# --- the process group ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("trap", "expected_code"),
    [
        pytest.param("", -signal.SIGTERM, id="stops-on-sigterm"),
        pytest.param("trap '' TERM;", -signal.SIGKILL, id="ignores-sigterm-killed"),
    ],
)
def test_terminate_stops_the_whole_group(tmp_path: Path, trap: str, expected_code: int) -> None:
    pid_file = tmp_path / "child.pid"
    spec = make_spec(tmp_path, "sh", "-c", f"{trap} sleep 60 & echo $! > {pid_file}; wait")
    process = start_process(spec)
    child = int(wait_for_file(pid_file))
    assert process.poll() is None
    process.terminate(grace=0.5)
    assert process.wait(timeout=10) == expected_code
    assert process_gone(child)


def test_background_job_left_behind_is_killed_when_the_step_ends(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    spec = make_spec(tmp_path, "sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo bye")
    process = start_process(spec)
    # The stray sleep keeps the output pipe open: without killing it, wait blocks 60 s.
    assert process.wait(timeout=20) == 0
    assert spec.log_path.read_text() == "bye\n"
    assert process_gone(int(pid_file.read_text()))


@pytest.mark.parametrize("method", ["wait", "poll"])
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param("exit 0", 0, id="success"),
        pytest.param("exit 3", 3, id="failure"),
        pytest.param("kill -TERM $$", -signal.SIGTERM, id="signal"),
    ],
)
def test_exit_codes_are_reported(tmp_path: Path, method: str, script: str, expected: int) -> None:
    process = start_process(make_spec(tmp_path, "sh", "-c", script))
    if method == "wait":
        code = process.wait(timeout=30)
    else:
        deadline = time.monotonic() + 30
        while (code := process.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert code == expected


def test_wait_times_out_while_the_step_runs(tmp_path: Path) -> None:
    process = start_process(make_spec(tmp_path, "sleep", "60"))
    assert process.wait(timeout=0.2) is None
    process.terminate(grace=5)
    assert process.wait(timeout=10) == -signal.SIGTERM


def test_log_that_cannot_be_written_does_not_block_the_step(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "yes | head -c 1048576", log_path=Path("/dev/full"))
    process = start_process(spec)
    assert process.wait(timeout=60) == 0
    assert process.log_error == "cannot write the step log: No space left on device"


def test_many_steps_at_once(tmp_path: Path) -> None:
    processes = [
        start_process(make_spec(tmp_path, "sh", "-c", f"echo {i}", log_path=tmp_path / f"{i}"))
        for i in range(50)
    ]
    assert [p.wait(timeout=60) for p in processes] == [0] * 50
    assert [(tmp_path / f"{i}").read_text() for i in range(50)] == [f"{i}\n" for i in range(50)]


# --- what the step sees --------------------------------------------------------------

LAUNCHER_PATH = {"memory_limit_bytes": 1024 * MiB}  # any launcher feature forces that path
PATHS = [
    pytest.param({}, id="fast-path"),
    pytest.param(LAUNCHER_PATH, id="launcher-path"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"PATH": PATH, "A": "1", "EMPTY": ""}, id="no-locale"),
        pytest.param({"PATH": PATH, "LC_CTYPE": "C"}, id="c-locale"),
        pytest.param({"PATH": PATH, "PYTHONPATH": "/nowhere", "PYTHONHOME": "/x"}, id="python"),
    ],
)
def test_the_step_gets_exactly_its_environment(
    tmp_path: Path, path: dict[str, object], env: dict[str, str]
) -> None:
    code, log = run(make_spec(tmp_path, "env", "-0", env=env, **path))
    assert code == 0
    assert dict(line.split("=", 1) for line in log.split("\0") if line) == env


@pytest.mark.parametrize("path", PATHS)
def test_arguments_are_passed_as_is(tmp_path: Path, path: dict[str, object]) -> None:
    arguments = ("a b", "$HOME", "'q'", 'x"y', "line\nbreak", "*", "")
    code, log = run(make_spec(tmp_path, "printf", "%s|", *arguments, **path))
    assert (code, log) == (0, "|".join(arguments) + "|")


@pytest.mark.parametrize("path", PATHS)
def test_the_step_runs_in_its_directory(tmp_path: Path, path: dict[str, object]) -> None:
    (tmp_path / "script.sh").write_text("#!/bin/sh\npwd\n")
    (tmp_path / "script.sh").chmod(0o755)
    assert run(make_spec(tmp_path, "./script.sh", **path)) == (0, f"{tmp_path}\n")


@pytest.mark.parametrize("path", PATHS)
def test_the_step_reads_nothing_and_holds_only_its_output(
    tmp_path: Path, path: dict[str, object]
) -> None:
    """stdin is /dev/null; stdout and stderr are the log's pipe; no other descriptor leaks."""
    script = "cat; echo dropped >&0; readlink /proc/$$/fd/0; ls /proc/$$/fd"
    code, log = run(make_spec(tmp_path, "sh", "-c", script, **path))
    assert (code, log.split()) == (0, ["/dev/null", "0", "1", "2"])


def test_steps_leave_no_descriptor_open(tmp_path: Path) -> None:
    run(make_spec(tmp_path, "true", log_path=tmp_path / "warm-up"))
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        assert run(make_spec(tmp_path, "echo", "x", log_path=tmp_path / f"{i}.log")) == (0, "x\n")
    with pytest.raises(StepStartError):
        start_process(make_spec(tmp_path, "no-such-command-here"))
    assert len(os.listdir("/proc/self/fd")) == before


# --- steps that cannot start ---------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("argv0", "message"),
    [
        pytest.param(
            "no-such-command-x", "command 'no-such-command-x' not found on PATH", id="PATH"
        ),
        pytest.param(
            "./missing.sh", "command './missing.sh' not found: no such file", id="relative"
        ),
        pytest.param("./not-executable", "is not executable", id="not-executable"),
    ],
)
def test_missing_command_is_a_start_error(
    tmp_path: Path, path: dict[str, object], argv0: str, message: str
) -> None:
    (tmp_path / "not-executable").write_text("echo hi\n")
    with pytest.raises(StepStartError, match=re.escape(message)):
        start_process(make_spec(tmp_path, argv0, **path))


@pytest.mark.parametrize("path", PATHS)
def test_missing_working_directory_is_a_start_error(
    tmp_path: Path, path: dict[str, object]
) -> None:
    spec = make_spec(tmp_path, "true", cwd=tmp_path / "gone", **path)
    with pytest.raises(StepStartError, match=r"cannot enter the working directory .*/gone"):
        start_process(spec)


@needs_root
def test_mount_over_a_file_is_a_start_error(tmp_path: Path) -> None:
    source = tmp_path / "vol"
    source.mkdir()
    (tmp_path / "a-file").write_text("")
    spec = make_spec(tmp_path, "true", mounts=(Mount(source, str(tmp_path / "a-file" / "x")),))
    with pytest.raises(StepStartError, match=r"cannot create the volume directory .*a-file/x"):
        start_process(spec)


DRIVER = """
import json, sys
from pathlib import Path
from reconciler.adapters.local.processes import Mount, ProcessSpec, StepStartError, start_process
tmp, user = Path(sys.argv[1]), json.loads(sys.argv[2])
spec = ProcessSpec(
    argv=("sh", "-c", "echo made > /tmp/reconciler-driver-{0}/out; cat /proc/self/uid_map"),
    env={"PATH": "/usr/bin:/bin"}, cwd=tmp, log_path=tmp / "log",
    mounts=(Mount(tmp / "vol", "/tmp/reconciler-driver-{0}"),), run_as_user=user,
)
try:
    print(json.dumps({"code": start_process(spec).wait()}))
except StepStartError as error:
    print(json.dumps({"error": str(error)}))
"""


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        # Without CAP_SYS_ADMIN, a user namespace (allowed here) still gives the mounts.
        pytest.param(None, {"code": 0}, id="user-namespace-fallback"),
        # Switching users rules the user namespace out: the real EPERM reaches the user.
        pytest.param(
            65534,
            {
                "error": "cannot create a mount namespace (root without CAP_SYS_ADMIN, and "
                "user namespaces not allowed): volumes on the local backend need root with "
                "CAP_SYS_ADMIN (in a container: --cap-add SYS_ADMIN), or remove use.volumes "
                "from the step"
            },
            id="no-capability-eperm",
        ),
    ],
)
def test_without_cap_sys_admin(
    tmp_path: Path, user: int | None, expected: dict[str, object]
) -> None:
    probe = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "unshare", "-Ur"]
    if user is None and subprocess.run([*probe, "true"], check=False).returncode:
        pytest.skip("this kernel allows no user namespaces")
    (tmp_path / "vol").mkdir()
    project = Path(reconciler.__file__).resolve().parent.parent
    driver = DRIVER.replace("{0}", tmp_path.name)
    result = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            sys.executable,
            "-c",
            driver,
            str(tmp_path),
            json.dumps(user),
        ],
        env={"PATH": PATH, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(f"/tmp/reconciler-driver-{tmp_path.name}", ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    assert (tmp_path / "vol" / "out").exists() is (user is None)


@pytest.mark.parametrize(
    ("run_as_user", "error"),
    [
        pytest.param(1001, "runAsUser 1001 needs the daemon to run as root", id="other-user"),
        pytest.param(1000, None, id="own-user-runs-as-is"),
    ],
)
def test_run_as_user_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_as_user: int, error: str | None
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a daemon running as uid 1000
    spec = make_spec(tmp_path, "true", run_as_user=run_as_user)
    if error is None:
        assert start_process(spec).wait(timeout=30) == 0
    else:
        with pytest.raises(StepStartError, match=error):
            start_process(spec)


@pytest.mark.parametrize(
    ("failure", "euid", "expected"),
    [
        pytest.param(
            LaunchFailure("namespace", errno.EPERM),
            1000,
            "cannot create a mount namespace (not root and user namespaces not allowed): "
            "volumes on the local backend need root",
            id="namespace-not-root",
        ),
        pytest.param(
            LaunchFailure("namespace", errno.EPERM),
            0,
            "root without CAP_SYS_ADMIN",
            id="namespace-root-without-capability",
        ),
        pytest.param(
            LaunchFailure("namespace", errno.EINVAL),
            0,
            "cannot create a mount namespace for the step's volumes: Invalid argument",
            id="namespace-other",
        ),
        pytest.param(
            LaunchFailure("mount", errno.ENOENT, "/workspace"),
            0,
            "cannot mount volume /state/vol at /workspace: No such file or directory",
            id="mount",
        ),
        pytest.param(
            LaunchFailure("readonly", errno.EPERM, "/workspace"),
            0,
            "cannot make the volume at /workspace read-only: Operation not permitted",
            id="readonly",
        ),
        pytest.param(
            LaunchFailure("mkdir", errno.EROFS, "/workspace"),
            0,
            "cannot create the volume directory /workspace on this host (Read-only file system)",
            id="mkdir",
        ),
        pytest.param(
            LaunchFailure("user", errno.EPERM, "65534"),
            0,
            "cannot run the step as uid 65534: Operation not permitted",
            id="user",
        ),
        pytest.param(
            LaunchFailure("memory", None, detail="not allowed to raise maximum limit"),
            0,
            "cannot set the memory limit (1024 bytes): not allowed to raise maximum limit",
            id="memory",
        ),
        pytest.param(
            LaunchFailure("exec", errno.ENOEXEC, "tool"),
            0,
            "command 'tool' is not a program this host can run",
            id="exec-format",
        ),
        pytest.param(
            LaunchFailure("internal", detail="KeyError('mounts')"),
            0,
            "the step launcher failed before starting the step: KeyError('mounts')",
            id="internal",
        ),
    ],
)
def test_launch_failure_messages(failure: LaunchFailure, euid: int, expected: str) -> None:
    spec = ProcessSpec(
        argv=("tool",),
        env=ENV,
        cwd=Path("/state/run"),
        log_path=Path("/state/run/log"),
        mounts=(Mount(Path("/state/vol"), "/workspace"),),
        memory_limit_bytes=1024,
    )
    assert expected in describe_launch_failure(failure, spec=spec, user=None, euid=euid)


# --- the spec itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Mount(Path("/x"), "workspace"), "absolute", id="relative-target"),
        pytest.param(lambda: Mount(Path("/x"), "/"), "absolute path below /", id="root-target"),
        pytest.param(
            lambda: ProcessSpec(argv=(), env={}, cwd=Path("/"), log_path=Path("/l")),
            "needs a command",
            id="empty-argv",
        ),
        pytest.param(
            lambda: ProcessSpec(
                argv=("x",), env={}, cwd=Path("/"), log_path=Path("/l"), memory_limit_bytes=0
            ),
            "memory limit",
            id="zero-memory",
        ),
    ],
)
def test_invalid_specs_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_spec_repr_shows_no_secret(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "true", env={**ENV, "TOKEN": CANARY}, redact=frozenset({CANARY}))
    assert CANARY not in repr(spec)
    assert "true" in repr(spec)


def test_log_file_is_private(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "true")
    assert run(spec)[0] == 0
    assert stat.S_IMODE(spec.log_path.stat().st_mode) == 0o600


# --- one I/O thread for every step ---------------------------------------------------


def test_done_callback_runs_once_the_log_is_written(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh", "-c", "echo out; echo err >&2; exit 4")
    seen: list[tuple[int | None, str]] = []
    done = threading.Event()

    def callback(process: StepProcess) -> None:
        seen.append((process.poll(), spec.log_path.read_text()))
        done.set()

    process = start_process(spec)
    process.add_done_callback(callback)
    assert done.wait(30)
    assert process.wait(timeout=5) == 4
    assert seen == [(4, "out\nerr\n")]
    process.add_done_callback(callback)  # done already: called at once, here
    assert len(seen) == 2


def test_a_failing_callback_stops_no_other_step(tmp_path: Path) -> None:
    def broken(process: StepProcess) -> None:
        raise RuntimeError("boom")

    first = start_process(make_spec(tmp_path, "true", log_path=tmp_path / "1"))
    first.add_done_callback(broken)
    assert first.wait(timeout=30) == 0
    second = start_process(make_spec(tmp_path, "sh", "-c", "echo 2", log_path=tmp_path / "2"))
    assert second.wait(timeout=30) == 0
    assert (tmp_path / "2").read_text() == "2\n"


def test_steps_need_no_thread_each(tmp_path: Path) -> None:
    start_process(make_spec(tmp_path, "true", log_path=tmp_path / "warm-up")).wait(timeout=30)
    threads = threading.active_count()
    processes = [
        start_process(make_spec(tmp_path, "sleep", "1", log_path=tmp_path / f"{i}"))
        for i in range(20)
    ]
    assert threading.active_count() == threads
    assert [p.wait(timeout=60) for p in processes] == [0] * 20


def test_output_kept_open_outside_the_group_is_cut_after_a_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "DRAIN_GRACE", 0.3)
    pid_file = tmp_path / "stray.pid"
    # setsid: the stray leaves the step's group, so killing the group misses it.
    script = (
        f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & "
        f"while [ ! -s {pid_file} ]; do sleep 0.01; done; echo started"
    )
    process = start_process(make_spec(tmp_path, "sh", "-c", script))
    started = time.monotonic()
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    log = (tmp_path / "step.log").read_text()
    assert log == "started\n[log closed: a process outside the step kept its output]\n"
    os.kill(int(wait_for_file(pid_file)), signal.SIGKILL)


def test_without_pidfds_a_thread_reaps_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    spec = make_spec(tmp_path, "sh", "-c", "echo hi; exit 5")
    assert run(spec) == (5, "hi\n")


def test_a_failure_capturing_one_log_still_ends_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, chunk: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(processes._Log, "feed", broken)
    process = start_process(make_spec(tmp_path, "sh", "-c", "echo hi; sleep 0.2; exit 2"))
    assert process.wait(timeout=30) == 2
    assert process.log_error == "cannot capture the step log: RuntimeError('boom')"
    monkeypatch.undo()
    assert run(make_spec(tmp_path, "echo", "fine", log_path=tmp_path / "next.log")) == (
        0,
        "fine\n",
    )
