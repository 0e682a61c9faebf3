"""Backend faults against a real daemon process.

- Kubernetes: the test API server answers 409, 429 (with Retry-After), 500 and 504, answers
  slowly, and forgets its watch history (410 Gone on every open watch), at random with a fixed
  seed, while the daemon applies the examples, follows git changes and runs a DAG several
  times. Then the faults stop, and the backend must equal git, no Job may have been created
  twice, and no run may be left ``running``.
- Local: the state database locked by another process (``BEGIN EXCLUSIVE``) and the disk
  full (a tiny tmpfs under the state directory; ``RLIMIT_FSIZE`` where mounting is not
  allowed). The daemon must survive, say what is wrong, and converge once the fault is gone,
  losing nothing it applied.

``pytest -s`` prints the figures; they are written to ``bench/out/reliability-backend-*.json``
when that directory exists. ``RECONCILER_SOAK=1`` (``make soak``) runs the long variant.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.gitsource import GitSource
from reconciler.app.syncing import SourceLoader
from tests.app.gitfixtures import Remote
from tests.kube.emulator import KubeEmulator
from tests.reliability.conftest import SOAK, job_creates, kubeconfig
from tests.reliability.faults import (
    DaemonProcess,
    Figures,
    applied,
    last_sync,
    running_daemon,
    wait_until,
)

PROJECT = Path(__file__).resolve().parents[2]
WORKFLOWS = "reconciler.dev/v1alpha1/workflows"
SPEC_HASH = "reconciler.dev/spec-hash"
FINISHED = ("succeeded", "failed", "cancelled", "skipped")
SEED = 20260308


def desired_hashes(remote: Remote, cache: Path) -> dict[str, str]:
    """What git says, as the reconciler reads it: workflow key -> spec hash."""
    with GitSource(remote.url, cache_dir=cache) as source:
        loaded = SourceLoader(source, environ={}).load(source.latest_revision())
        assert not loaded.errors, loaded.errors
        return {str(key): d.spec_hash for key, d in loaded.desired.items()}


# -- Kubernetes ---------------------------------------------------------------------------


class Storm:
    """Injects API faults at random (a fixed seed) until stopped, and counts those that hit.

    A fault waits for the next request it matches; one that matched nothing within
    ``EXPIRY`` seconds is withdrawn, so faults do not pile up on requests that never come.
    409 is only ever the answer to a write (an API server never answers a read with it).
    """

    KINDS = ("409", "429", "500", "504 timeout", "slow answer", "410 compact+close watches")
    WEIGHTS = (3, 3, 3, 2, 3, 1)
    VERBS = (None, "get", "list", "create", "patch", "delete", "watch")
    WRITES = ("create", "patch", "delete")
    PLURALS = (None, "workflows", "workflowruns", "jobs", "pods", "configmaps", "events")
    EXPIRY = 1.5

    def __init__(self, kube: KubeEmulator, *, seed: int, pause: tuple[float, float]) -> None:
        self.kube = kube
        self.rng = random.Random(seed)
        self.pause = pause
        self.counts: collections.Counter[str] = collections.Counter()  # faults that hit
        self.withdrawn = 0
        self._pending: list[tuple[str, Any, int, float]] = []  # kind, fault, times, when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="storm", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._settle(expire_before=float("inf"))

    def _settle(self, *, expire_before: float) -> None:
        """Count what hit; withdraw faults older than ``expire_before``."""
        kube = self.kube
        kept = []
        with kube._mutex:  # the emulator's lock: its fault list is private
            for kind, fault, times, when in self._pending:
                live = any(f is fault for f in kube._faults)
                left = fault.times if live else 0
                if live and when < expire_before:
                    kube._faults.remove(fault)
                    self.withdrawn += 1
                    live = False
                if not live:
                    self.counts[kind] += times - left
                else:
                    kept.append((kind, fault, times, when))
        self._pending = kept

    def _loop(self) -> None:
        rng = self.rng
        while not self._stop.wait(rng.uniform(*self.pause)):
            self._settle(expire_before=time.monotonic() - self.EXPIRY)
            kind = rng.choices(self.KINDS, self.WEIGHTS)[0]
            if kind.startswith("410"):
                self.kube.compact()
                self.kube.close_watches()
                self.counts[kind] += 1
                continue
            times = rng.randint(1, 2)
            target: dict[str, Any] = {
                "verb": rng.choice(self.WRITES if kind == "409" else self.VERBS),
                "plural": rng.choice(self.PLURALS),
                "times": times,
            }
            if kind == "slow answer":
                self.kube.inject(status=0, delay=rng.uniform(0.3, 2.5), **target)
            elif kind == "429":
                self.kube.inject(status=429, retry_after=rng.choice((0.1, 0.5, 1.0)), **target)
            else:
                self.kube.inject(status=int(kind.split()[0]), **target)
            with self.kube._mutex:
                fault = self.kube._faults[-1]
            self._pending.append((kind, fault, times, time.monotonic()))


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    backend = ("--backend", "kubernetes", "--kubeconfig", str(config))
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args, *backend],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT,
    )


def trigger(config: Path, name: str) -> str:
    """``reconciler run`` (retried: the storm hits the CLI's requests too)."""
    errors = []
    for _ in range(10):
        done = cli(config, "run", "-n", name, "-w", "public")
        if done.returncode == 0:
            return done.stdout.strip()
        errors.append(done.stderr.strip().splitlines()[-1:])
        time.sleep(0.2)
    raise AssertionError(f"reconciler run -n {name} kept failing: {errors}")


def run_states(kube: KubeEmulator) -> dict[str, str]:
    return {
        r["metadata"]["name"]: str((r.get("status") or {}).get("state") or "pending")
        for r in kube.objects("workflowruns")
    }


def failed_steps(kube: KubeEmulator) -> dict[str, str]:
    """Why steps failed: run/step -> reason."""
    return {
        f"{r['metadata']['name']}/{step['name']}": str(step.get("reason") or "")[:200]
        for r in kube.objects("workflowruns")
        for step in (r.get("status") or {}).get("steps") or ()
        if step.get("state") == "failed"
    }


def cluster_hashes(kube: KubeEmulator) -> dict[str, str]:
    return {
        f"{w['metadata']['namespace']}/{w['metadata']['name']}": str(
            (w["metadata"].get("annotations") or {}).get(SPEC_HASH)
        )
        for w in kube.objects("workflows")
    }


def change_git_under_faults(
    remote: Remote, cluster: KubeEmulator, daemon: DaemonProcess, figures: Figures, tmp: Path
) -> dict[str, str]:
    """Update a workflow, delete one, add one; wait until the cluster has it; what git says."""
    text = remote.read("workflows/daily-report.yaml")
    remote.write("workflows/daily-report.yaml", text.replace("500m", "2"))
    remote.remove("workflows/projected-workflow.yaml")
    remote.write("workflows/extra.yaml", text.replace("name: daily-report", "name: extra"))
    remote.commit("under the storm")
    started, passes = time.monotonic(), daemon.passes()
    want = desired_hashes(remote, tmp / "check-cache")
    try:
        wait_until(lambda: cluster_hashes(cluster) == want, seconds=90, step=0.1)
    except AssertionError:
        raise AssertionError(
            f"the backend is not git under faults: {cluster_hashes(cluster)} != {want}"
        ) from None
    figures.add("seconds_until_converged_under_faults", round(time.monotonic() - started, 1))
    figures.add("passes_ended_until_converged_under_faults", daemon.passes() - passes)
    return want


def kube_storm(cluster: KubeEmulator, tmp_path: Path, *, runs: int, name: str) -> None:
    assert runs >= 2, "the git change comes with the second run"
    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    figures = Figures(name)
    storm = Storm(cluster, seed=SEED, pause=(0.05, 0.2))
    started = time.monotonic()
    with running_daemon(
        remote.url,
        tmp_path / "state",
        interval=0.5,
        args=("--backend", "kubernetes", "--kubeconfig", str(config)),
        env={"RECONCILER_STATUS_ENABLED": "false"},
    ) as daemon:
        storm.start()
        try:
            wait_until(
                lambda: len(cluster.objects("workflows")) == 4,
                seconds=90,
                what="the examples applied under faults",
            )
            triggered = []
            want: dict[str, str] = {}
            for i in range(runs):
                triggered.append(trigger(config, "parallel-batch-pipeline"))
                if i % 2:
                    triggered.append(trigger(config, "customer-batch-pipeline"))
                if i == 1:  # git changes while runs run and faults fly
                    want = change_git_under_faults(remote, cluster, daemon, figures, tmp_path)
                time.sleep(0.5)
            try:
                wait_until(
                    lambda: all(run_states(cluster).get(r) in FINISHED for r in triggered),
                    seconds=120,
                    step=0.2,
                )
            except AssertionError:
                raise AssertionError(f"runs still active: {run_states(cluster)}") from None
        finally:
            storm.stop()
        storm_seconds = time.monotonic() - started
        passes_at_calm = daemon.passes()
        calm = time.monotonic()
        wait_until(lambda: cluster_hashes(cluster) == want, seconds=60, step=0.1)
        converged_seconds = time.monotonic() - calm
        passes_to_converge = daemon.passes() - passes_at_calm
        wait_until(
            lambda: all(s in FINISHED for s in run_states(cluster).values()),
            seconds=60,
            what="no run left active",
        )
        time.sleep(2)  # a few more passes: still equal, still nothing active
        assert cluster_hashes(cluster) == want
        states = run_states(cluster)
        assert not [r for r, s in states.items() if s not in FINISHED], states
        assert daemon.alive, daemon.log_text()[-5000:]
        code = daemon.stop()
    log = daemon.log_text()
    assert code == 0, log[-5000:]
    creates = job_creates(cluster)  # successful creates by Job name
    duplicates = {job: n for job, n in creates.items() if n > 1}
    assert not duplicates, duplicates
    answers = collections.Counter(
        r.status for r in cluster.requests if r.status >= 400 and r.plural is not None
    )
    figures.add("seed", SEED)
    figures.add("faults_injected", dict(storm.counts))
    figures.add("faults_injected_total", sum(storm.counts.values()))
    figures.add("faults_withdrawn_unmatched", storm.withdrawn)
    figures.add("error_answers_by_status", {str(k): v for k, v in sorted(answers.items())})
    figures.add("api_requests", len(cluster.requests))
    figures.add("runs", dict(collections.Counter(states.values())))
    figures.add("failed_steps", failed_steps(cluster))
    figures.add("jobs_created", sum(creates.values()))
    figures.add("storm_seconds", round(storm_seconds, 1))
    figures.add("passes_until_converged_after_faults", passes_to_converge)
    figures.add("seconds_until_converged_after_faults", round(converged_seconds, 2))
    figures.add("tracebacks_in_log", log.count("Traceback"))
    figures.save()
    # each run ran its DAG to an end: a failed step is allowed (a fault that outlasted the
    # retries fails it, as a real cluster would), a step left pending or running is not
    for run in cluster.objects("workflowruns"):
        steps = {st["name"]: st.get("state") for st in (run.get("status") or {}).get("steps") or ()}
        assert steps, run["metadata"]["name"]
        assert not {"pending", "running"} & set(steps.values()), (run["metadata"]["name"], steps)


def test_kubernetes_faults_at_random(cluster: KubeEmulator, tmp_path: Path) -> None:
    kube_storm(cluster, tmp_path, runs=3, name="backend-kubernetes")


@pytest.mark.skipif(not SOAK, reason="long run: make soak")
@pytest.mark.timeout(1200)
def test_kubernetes_faults_at_random_soak(cluster: KubeEmulator, tmp_path: Path) -> None:
    kube_storm(cluster, tmp_path, runs=40, name="backend-kubernetes-soak")


# -- local: a locked database, a full disk ------------------------------------------------

HOLD = 12.0  # seconds a local fault lasts

SLEEPER = """version: v2alpha
name: sleeper
type: workflow
spec:
  dag:
    - name: nap
      spec:
        stack: container
        stackSpec: {image: alpine:3.20, command: [sleep, "2"]}
    - name: after
      depends: [nap]
      spec:
        stack: container
        stackSpec: {image: alpine:3.20, command: ["true"]}
"""


def readyz(daemon: DaemonProcess) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.http_port}/readyz", timeout=5
        ) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as failure:
        return dict(json.loads(failure.read()))
    except OSError:
        return {}


def local_run(state: Path, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "-n", name, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def local_runs(state: Path) -> dict[str, str]:
    """Every run: id -> state (read-only)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)
    ) as db:
        return {str(r): str(s) for r, s in db.execute("SELECT run_id, state FROM runs")}


class LocalWorld:
    def __init__(self, root: Path, state: Path) -> None:
        self.remote = Remote(root)
        self.remote.copy_examples()
        self.remote.write("workflows/sleeper.yaml", SLEEPER)
        self.remote.commit("a workflow that sleeps")
        self.state = state

    def change(self) -> str:
        """A commit that updates one workflow and adds another."""
        text = self.remote.read("workflows/daily-report.yaml")
        self.remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", "cpu: 3"))
        self.remote.write(
            "workflows/late.yaml", text.replace("name: daily-report", "name: late-arrival")
        )
        return self.remote.commit("changed while the backend was in trouble")


def through_local_fault(
    world: LocalWorld,
    daemon: DaemonProcess,
    figures: Figures,
    *,
    inject: Any,
    heal: Any,
    says: tuple[str, ...],
) -> None:
    """With the examples applied and one run done: start a run, inject, push a change while
    the fault holds, check that the daemon lives and says what is wrong; heal, and check that
    the change is applied, the run ends, and everything from before is still there."""
    state = world.state
    wait_until(lambda: len(applied(state)) == 5, seconds=60, what="the examples applied")
    first = local_run(state, "sleeper")
    wait_until(lambda: local_runs(state).get(first) == "succeeded", what="a first run")
    before_applied = applied(state)
    second = local_run(state, "sleeper")  # its steps end while the fault holds
    wait_until(lambda: local_runs(state).get(second) == "running", what="the second run")
    inject()
    injected = time.monotonic()
    revision = world.change()

    def said() -> bool:
        return any(piece in daemon.log_text() for piece in says)

    # the log says it at once; /readyz once a pass ends (a pass retries a while first)
    detect = wait_until(said, seconds=60, what=f"the log to say one of {says}")
    lines = [line for line in daemon.log_text().splitlines() if any(p in line for p in says)]
    reasons = set()
    while time.monotonic() - injected < HOLD:  # the run's steps end meanwhile
        reason = readyz(daemon).get("reason")
        if reason:
            reasons.add(str(reason))
        time.sleep(0.2)
    assert daemon.alive, daemon.log_text()[-5000:]
    assert set(before_applied) <= set(applied(state)), "a workflow was lost"
    passes_before = daemon.passes()
    healed = time.monotonic()
    heal()

    def converged() -> bool:
        record = last_sync(state)
        return (
            record is not None
            and record.revision == revision
            and record.result == "succeeded"
            and local_runs(state).get(second) in FINISHED
        )

    wait_until(converged, seconds=90, what="convergence after the fault")
    recovery = time.monotonic() - healed
    passes = daemon.passes() - passes_before
    now = applied(state)
    assert set(before_applied) <= set(now)
    assert "public/late-arrival" in now
    runs = local_runs(state)
    assert runs[first] == "succeeded"
    assert runs[second] == "succeeded", runs
    assert readyz(daemon).get("reason") is None, readyz(daemon)
    with contextlib.closing(sqlite3.connect(state / "state.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert daemon.alive
    log = daemon.log_text()
    figures.add("log_says", lines[0][:400])
    figures.add("readyz_said", sorted(reasons))
    figures.add("detected_s", round(detect, 2))
    figures.add("recovered_s", round(recovery, 2))
    figures.add("passes_until_converged", passes)
    figures.add("tracebacks_in_log", log.count("Traceback"))


def test_a_locked_state_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    world = LocalWorld(tmp_path / "git", state)
    figures = Figures("backend-sqlite-locked")
    holder: list[sqlite3.Connection] = []

    def lock() -> None:  # another process's connection in the middle of a long write
        db = sqlite3.connect(state / "state.db", isolation_level=None, timeout=30)
        db.execute("BEGIN EXCLUSIVE")
        holder.append(db)

    def unlock() -> None:
        db = holder.pop()
        db.execute("ROLLBACK")
        db.close()

    with running_daemon(
        world.remote.url, state, interval=0.5, env={"RECONCILER_STATUS_ENABLED": "false"}
    ) as daemon:
        try:
            through_local_fault(
                world,
                daemon,
                figures,
                inject=lock,
                heal=unlock,
                says=("locked", "write lock"),
            )
        finally:
            while holder:
                unlock()
        assert daemon.stop() == 0, daemon.log_text()[-5000:]
    figures.save()


class FullDisk:
    """The state directory on a tiny tmpfs, filled up on demand. Where mounting is not
    allowed (or ``rlimit`` is asked for), ``RLIMIT_FSIZE`` of the daemon (set from outside
    with prlimit) instead: every write that would grow a file fails with EFBIG."""

    def __init__(self, directory: Path, *, mode: str, size_mib: int = 16) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.mode = mode
        self.pid: int | None = None
        self.filler = directory / "filler"
        if mode == "tmpfs":
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(directory)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip()}); the rlimit variant")

    def fill(self) -> None:
        if self.mode == "tmpfs":
            chunk = b"\0" * (1 << 16)
            with self.filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
                while True:  # until ENOSPC
                    out.write(chunk)
        else:
            import resource

            assert self.pid is not None
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    def free(self) -> None:
        if self.mode == "tmpfs":
            self.filler.unlink(missing_ok=True)
        else:
            import resource

            assert self.pid is not None
            limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, limit)

    def close(self) -> None:
        if self.mode == "tmpfs":
            subprocess.run(["umount", "-l", str(self.directory)], capture_output=True)


def full_disk(tmp_path: Path, mode: str) -> None:
    state = tmp_path / "state"
    disk = FullDisk(state, mode=mode)
    try:
        world = LocalWorld(tmp_path / "git", state)
        figures = Figures(f"backend-disk-full-{mode}")
        with running_daemon(
            world.remote.url, state, interval=0.5, env={"RECONCILER_STATUS_ENABLED": "false"}
        ) as daemon:
            disk.pid = daemon.process.pid
            through_local_fault(
                world,
                daemon,
                figures,
                inject=disk.fill,
                heal=disk.free,
                says=("No space left", "disk is full", "File too large", "disk I/O error"),
            )
            assert daemon.stop() == 0, daemon.log_text()[-5000:]
        figures.save()
    finally:
        disk.close()


def test_a_full_disk(tmp_path: Path) -> None:
    """A tmpfs where this may mount one (root in a privileged container), else the rlimit."""
    probe = tmp_path / "probe"
    probe.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    full_disk(tmp_path, "tmpfs" if mounted.returncode == 0 else "rlimit")


@pytest.mark.skipif(not SOAK, reason="long run: make soak")
def test_a_full_disk_by_rlimit(tmp_path: Path) -> None:
    full_disk(tmp_path, "rlimit")
