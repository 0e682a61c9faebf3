"""The daemon as a user runs it: a real process, SIGTERM, --once, --watch, and git over ssh."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.gitsource import GitCredentials, GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.adapters.watching import watch_directory
from reconciler.app.cli import cli
from reconciler.app.daemon import Daemon, LoopOptions
from reconciler.app.syncing import Syncer, SyncOptions
from tests.app.gitfixtures import Remote
from tests.conftest import EXAMPLES_REPO
from tests.sshservers import SshServer


def wait_for(condition: Callable[[], bool], *, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def applied_names(state: Path) -> set[str]:
    if not (state / "state.db").exists():
        return set()
    store = LocalStore(state, clock=SystemClock())
    try:
        return {w.name for w in store.applied_workflows(owner="default").values()}
    finally:
        store.close()


def cpu_limit(state: Path, name: str) -> str:
    store = LocalStore(state, clock=SystemClock())
    try:
        workflow = store.get_workflow(f"public/{name}")  # type: ignore[arg-type]
        assert workflow is not None
        return str(workflow.spec["spec"]["dag"][0]["spec"]["resources"]["limits"]["cpu"])
    finally:
        store.close()


def test_daemon_process_follows_git_and_stops_on_sigterm(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--repo",
            remote.url,
            "--state-dir",
            str(state),
            "--interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(applied_names(state)) == 4)
        text = remote.read("workflows/daily-report.yaml")
        remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", "cpu: 2"))
        remote.commit("More CPU")
        wait_for(lambda: cpu_limit(state, "daily-report") == "2")
        remote.remove("workflows/daily-report.yaml")
        remote.commit("Drop the report")
        wait_for(lambda: "daily-report" not in applied_names(state))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "daemon stopped" in err


@pytest.mark.parametrize(
    ("broken", "code"),
    [pytest.param(False, 0, id="valid"), pytest.param(True, 1, id="invalid")],
)
def test_daemon_once_exit_code(tmp_path: Path, broken: bool, code: int) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    if broken:
        remote.write("workflows/bad.yaml", "version: v2alpha\nname: Bad\n")
        remote.commit("Add a broken manifest")
    result = CliRunner().invoke(
        cli, ["daemon", "--once", "--repo", remote.url, "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code == code, result.output
    assert len(applied_names(tmp_path / "s")) == 4


def test_watch_reconciles_a_saved_file(tmp_path: Path) -> None:
    directory = tmp_path / "repo"
    shutil.copytree(EXAMPLES_REPO, directory)
    state = tmp_path / "state"
    store = LocalStore(state, clock=SystemClock())
    syncer = Syncer(
        DirectorySource(directory),
        store,
        clock=SystemClock(),
        options=SyncOptions(owner="default"),
        sleep=time.sleep,
    )
    daemon = Daemon(syncer, options=LoopOptions(interval=3600))
    watch_directory(directory, on_change=daemon.poke, stop_event=daemon.stop_event)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: len(store.applied_workflows(owner="default")) == 4)
        time.sleep(0.3)  # let the watcher start before the edit
        path = directory / "workflows" / "daily-report.yaml"
        path.write_text(path.read_text().replace("cpu: 500m", "cpu: 3"))
        wait_for(lambda: cpu_limit(state, "daily-report") == "3")
        assert daemon.passes >= 2
    finally:
        daemon.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_sync_over_ssh(tmp_path: Path, sshd: SshServer) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    source = GitSource(
        sshd.url(remote.bare),
        cache_dir=tmp_path / "cache",
        credentials=GitCredentials(ssh_key_file=sshd.client_key, known_hosts_file=sshd.known_hosts),
    )
    store = LocalStore(tmp_path / "state", clock=SystemClock())
    syncer = Syncer(
        source, store, clock=SystemClock(), options=SyncOptions(owner="default"), sleep=time.sleep
    )
    assert syncer.sync().result == "succeeded"
    assert len(store.applied_workflows(owner="default")) == 4


def test_sync_cli_over_ssh_with_settings_from_environment(tmp_path: Path, sshd: SshServer) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    env = {
        "RECONCILER_REPO": sshd.url(remote.bare),
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_SSH_KEY_FILE": str(sshd.client_key),
        "RECONCILER_KNOWN_HOSTS_FILE": str(sshd.known_hosts),
    }
    result = CliRunner().invoke(cli, ["sync"], env={**os.environ, **env})
    assert result.exit_code == 0, result.output
    assert len(applied_names(tmp_path / "state")) == 4
    (tmp_path / "empty").write_text("")
    result = CliRunner().invoke(
        cli, ["sync", "--known-hosts-file", str(tmp_path / "empty")], env={**os.environ, **env}
    )
    assert result.exit_code == 1
    assert "host key" in result.output


SLOW = """version: v2alpha
name: slow
type: workflow
spec:
  dag:
    - name: nap
      spec:
        stack: container
        stackSpec:
          image: alpine:3.20
          command: [sleep, "120"]
"""


def start_daemon(repo: Path, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--repo",
            str(repo),
            "--state-dir",
            str(state),
            "--interval",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECONCILER_SHUTDOWN_GRACE": "1"},
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[1].split()[0] != "Z"


def test_kill_9_mid_run_then_restart(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "slow.yaml").write_text(SLOW)
    state = tmp_path / "state"
    daemon = start_daemon(repo, state)
    try:
        wait_for(lambda: "slow" in applied_names(state))
        second = start_daemon(repo, state)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert "another daemon" in err
        result = CliRunner().invoke(cli, ["run", "-n", "slow", "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        run_id = result.stdout.strip()
        store = LocalStore(state, clock=SystemClock())

        def step_pid() -> int | None:
            run = store.get_run("public", run_id)
            return store.step_pids(run).get("nap") if run is not None else None

        wait_for(lambda: step_pid() is not None)
        pid = step_pid()
        assert pid is not None
        daemon.kill()  # SIGKILL: no cleanup at all
        daemon.wait(timeout=10)
        assert pid_alive(pid)  # the step outlived the daemon
        run = store.get_run("public", run_id)
        assert run is not None
        assert run.state == "running"
        daemon = start_daemon(repo, state)
        wait_for(lambda: (r := store.get_run("public", run_id)) is not None and r.state == "failed")
        run = store.get_run("public", run_id)
        assert run is not None
        assert run.reason == "daemon restarted while the run was in progress"
        wait_for(lambda: not pid_alive(pid))
        assert [r.run_id for r in store.runs_of("public/slow")] == [run_id]  # type: ignore[arg-type]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0


def test_sigterm_stops_running_steps_and_fails_their_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "slow.yaml").write_text(SLOW)
    state = tmp_path / "state"
    daemon = start_daemon(repo, state)
    try:
        wait_for(lambda: "slow" in applied_names(state))
        run_id = (
            CliRunner().invoke(cli, ["run", "-n", "slow", "--state-dir", str(state)]).stdout.strip()
        )
        store = LocalStore(state, clock=SystemClock())
        wait_for(
            lambda: (r := store.get_run("public", run_id)) is not None and r.state == "running"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err
    run = store.get_run("public", run_id)
    assert run is not None
    assert run.state == "failed"
    assert run.steps[0].reason == "killed by SIGTERM"


MINUTELY = """version: v2alpha
name: minutely
type: workflow
spec:
  schedule:
    crons: ["* * * * *"]
    timezone: Europe/Berlin
  dag:
    - name: tick
      spec:
        stack: container
        stackSpec: {image: alpine:3.20, command: [sh, -c, "sleep 3"]}
"""


@pytest.mark.timeout(180)
def test_daemon_fires_a_slot_once_across_kill_9(tmp_path: Path) -> None:
    """A real minute boundary: the slot's run is created once, on time, and a daemon killed
    and restarted during that run creates nothing twice."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "minutely.yaml").write_text(MINUTELY)
    state = tmp_path / "state"
    daemon = start_daemon(repo, state)
    try:
        wait_for(lambda: "minutely" in applied_names(state))
        store = LocalStore(state, clock=SystemClock())
        wait_for(lambda: bool(store.runs_of("public/minutely")), seconds=75)  # type: ignore[arg-type]
        (first,) = store.runs_of("public/minutely")  # type: ignore[arg-type]
        assert first.trigger == "schedule"
        assert first.slot is not None
        assert first.run_id.endswith(first.slot.strftime("%Y%m%dt%H%Mz"))
        assert (first.created_at - first.slot).total_seconds() < 5  # on time
        daemon.kill()
        daemon.wait(timeout=10)
        daemon = start_daemon(repo, state)
        wait_for(lambda: (r := store.get_run("public", first.run_id)) is not None and not r.active)
        runs = [r for r in store.runs_of("public/minutely") if r.slot == first.slot]  # type: ignore[arg-type]
        assert len(runs) == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)


def test_daemon_reports_runs_on_the_status_branch(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
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
        env={
            **os.environ,
            "RECONCILER_STATUS_FLUSH_INTERVAL": "0.5",
            "RECONCILER_SHUTDOWN_GRACE": "1",
        },
    )
    try:
        wait_for(lambda: len(applied_names(state)) == 4)
        result = CliRunner().invoke(cli, ["run", "-n", "daily-report", "--state-dir", str(state)])
        run_id = result.stdout.strip()
        report = f"workflows/public/daily-report/runs/{run_id}.md"

        def reported() -> bool:
            done = subprocess.run(
                ["git", "cat-file", "-e", f"status:{report}"], cwd=remote.bare, capture_output=True
            )
            return done.returncode == 0

        wait_for(reported)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", "status"],
        cwd=remote.bare,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"README.md", "sync.json", "workflows/public/daily-report/status.json"} <= set(files)
