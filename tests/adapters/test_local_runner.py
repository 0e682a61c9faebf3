"""The local step runner's spare step directories and log files (made ahead of the starts).

Whether spares are made depends on how fast the filesystem makes directories;
the tests pin the thresholds, so what they check does not depend on the disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.dag_overhead import chain_manifest
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local import runner as runner_module
from reconciler.adapters.local.runner import LocalStepRunner, _Spares
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.app.running import Executor
from tests.app.test_executor import create_run, run_all

KEEP = 2


def wait_until_full(spares: _Spares, *, logs: bool = True) -> None:
    """Block until the spares thread has made all it keeps (a condition, not a timing)."""

    def full() -> bool:
        return len(spares._dirs) == KEEP and (not logs or len(spares._logs) == KEEP)

    with spares._cond:
        if not spares._cond.wait_for(full, timeout=60):
            raise AssertionError(f"the spares thread made {spares._dirs} and {spares._logs}")


@pytest.fixture(autouse=True)
def never_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "SPARES_UNTIL", 0.0)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "state" / "runs"


@pytest.fixture
def spares(runs: Path) -> Iterator[_Spares]:
    made = _Spares(runs, keep=KEEP)
    wait_until_full(made)
    yield made
    made.close()


def spare_holders(runs: Path) -> list[str]:
    return sorted(name for name in os.listdir(runs) if name.startswith(".spare-"))


def test_a_spare_directory_becomes_the_step_directory(spares: _Spares, runs: Path) -> None:
    target = runs / "public" / "run-1" / "a"  # the run's first step: its directory is new
    assert spares.take_dir(target)
    assert target.is_dir()
    assert os.listdir(target) == []
    assert spares.take_dir(runs / "public" / "run-1" / "b")


def test_a_spare_file_becomes_the_step_log(spares: _Spares, runs: Path) -> None:
    (runs / "public" / "run-1").mkdir(parents=True)
    path = runs / "public" / "run-1" / "a.log"
    fd = spares.take_log(path)
    assert fd is not None
    os.write(fd, b"written through the spare\n")
    os.close(fd)
    assert path.read_bytes() == b"written through the spare\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_taken_name_is_left_to_the_start(spares: _Spares, runs: Path) -> None:
    step_dir = runs / "public" / "run-1" / "a"
    step_dir.mkdir(parents=True)
    (step_dir / "kept").write_text("x")
    log = runs / "public" / "run-1" / "a.log"
    log.write_text("earlier")
    assert not spares.take_dir(step_dir)  # not empty: _make_step_dir reuses it as it is
    assert os.listdir(step_dir) == ["kept"]
    assert spares.take_log(log) is None  # start_process truncates it
    assert log.read_text() == "earlier"
    wait_until_full(spares)  # the log file was given back, the directory made again


def test_closing_removes_every_spare(runs: Path) -> None:
    made = _Spares(runs, keep=KEEP)
    wait_until_full(made)
    assert len(spare_holders(runs)) == 1
    made.close()
    assert spare_holders(runs) == []
    assert not made.take_dir(runs / "public" / "run-1" / "a")
    assert made.take_log(runs / "x.log") is None


def test_spares_of_a_process_that_died_are_removed(runs: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (runs / f".spare-{dead.pid}-1" / "3").mkdir(parents=True)
    (runs / f".spare-{os.getppid()}-1" / "1").mkdir(parents=True)  # alive: left alone
    made = _Spares(runs, keep=KEEP)
    try:
        assert not (runs / f".spare-{dead.pid}-1").exists()
        assert (runs / f".spare-{os.getppid()}-1" / "1").is_dir()
    finally:
        made.close()


def test_without_unnamed_files_only_directories_are_made(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_O_TMPFILE", None)  # not Linux, say
    made = _Spares(runs, keep=KEEP)
    try:
        wait_until_full(made, logs=False)
        assert made.take_log(runs / "x.log") is None
        assert made.take_dir(runs / "public" / "run-1" / "a")
    finally:
        made.close()


def test_spares_pause_while_directories_are_fast_and_resume(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "SPARES_UNTIL", float("inf"))  # any cost is fast
    made = _Spares(runs, keep=KEEP)
    try:
        with made._cond:
            assert made._cond.wait_for(lambda: not made._active, timeout=60)
        monkeypatch.setattr(runner_module, "SPARES_UNTIL", 0.0)
        taken = 0
        while made.take_dir(runs / "public" / "run-1" / f"s{taken}"):
            taken += 1  # what was made before the pause is used up, and not made again
        assert 0 < taken <= KEEP
        made.resume()
        wait_until_full(made)
    finally:
        made.close()


def test_the_first_start_removes_spares_a_dead_daemon_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "SPARES_FROM", float("inf"))  # a fast disk: no spares
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = tmp_path / "state"
    (state / "runs" / f".spare-{dead.pid}-1" / "7").mkdir(parents=True)
    store = LocalStore(state, clock=SystemClock())
    create_run(store, chain_manifest(1), "chain-1")
    runner = LocalStepRunner(state, secrets=SecretStore(state), clock=SystemClock())
    run_all(Executor(store, runner, clock=SystemClock()))
    assert spare_holders(state / "runs") == []


@pytest.mark.parametrize("slow", [True, False], ids=["slow-disk", "fast-disk"])
def test_a_chain_through_the_runner_leaves_its_steps_and_no_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    # Every new directory counts as slow (spares from the second start on), or none does.
    monkeypatch.setattr(runner_module, "SPARES_FROM", 0.0 if slow else float("inf"))
    state = tmp_path / "state"
    store = LocalStore(state, clock=SystemClock())
    create_run(store, chain_manifest(6), "chain-1")
    runner = LocalStepRunner(state, secrets=SecretStore(state), clock=SystemClock())
    run_all(Executor(store, runner, clock=SystemClock()))
    run_dir = state / "runs" / "public" / "chain-1"
    assert sorted(os.listdir(run_dir)) == sorted(
        [f"s{i}" for i in range(6)] + [f"s{i}.log" for i in range(6)]
    )
    assert all((run_dir / f"s{i}.log").read_bytes() == b"" for i in range(6))
    assert all(stat.S_IMODE((run_dir / f"s{i}.log").stat().st_mode) == 0o600 for i in range(6))
    assert (runner._spares is not None) == slow
    runner.close()
    assert spare_holders(state / "runs") == []
