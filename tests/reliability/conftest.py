"""Shared helpers for the reliability tests: real daemon processes on either backend, a fast
clock, and an account of every cron slot.

- ``DaemonProcess``: ``python -m reconciler daemon`` on the local backend (``--state-dir``)
  or on Kubernetes (``--backend kubernetes --kubeconfig``, against ``tests/kube``'s API
  server), its log in a file (a pipe would fill up and block it), stopped with SIGTERM or
  killed with SIGKILL;
- ``warp_setting``: a ``clock_warp`` (``RECONCILER_CLOCK_WARP``) that makes the daemons'
  wall clock run fast, so a hundred every-minute slots take a minute or two;
- ``slot_workflow``: a manifest on ``* * * * *`` whose steps append ``<run> <step>`` to a
  markers file when they start, so a step that ran twice shows as two lines;
- ``account_slots``: every slot of a workflow from its creation to its ledger, each either
  run exactly once or recorded skipped or failed with a reason; lost and duplicated ones
  listed;
- ``report``: the figures of a test, printed and written to ``bench/out/`` when it exists.

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from reconciler.app.settings import Settings
from reconciler.app.wiring import build_store
from reconciler.core.names import WorkflowKey
from reconciler.core.runs import Run
from reconciler.ports import RunBackend
from tests.kube.emulator import KubeEmulator

PROJECT = Path(__file__).resolve().parents[2]
BENCH_OUT = PROJECT / "bench" / "out"
Backend = Literal["local", "kubernetes"]
LEASE_PATH = ("coordination.k8s.io/v1/leases", "workflow-reconciler", "workflow-reconciler-leader")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})
# ``make soak``: the same tests at scale. RELIABILITY_SEED varies where the kills fall.
SOAK = os.environ.get("RECONCILER_SOAK", "") not in ("", "0")  # as the other soak tests
SEED = int(os.environ.get("RELIABILITY_SEED", "20260101"))


def wait_for(
    condition: Callable[[], bool], *, seconds: float = 60.0, what: str = "", step: float = 0.1
) -> float:
    """Poll until ``condition()`` holds; the seconds it took. AssertionError after ``seconds``."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what or condition}")
        time.sleep(step)


# -- the fast clock --------------------------------------------------------------------------


def warp_setting(rate: float, *, lead: float = 2.0) -> str:
    """A ``clock_warp`` running ``rate`` times as fast, equal to the real clock ``lead`` seconds
    from now (so the warped clock is still near real time while the first daemon starts: a
    Workflow created then, stamped by the API server's real clock, has few slots behind it)."""
    anchor = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    return f"{rate:g}x@{anchor.isoformat().replace('+00:00', 'Z')}"


def warped_now(warp: str) -> datetime:
    """What the daemons' warped clock reads now."""
    from reconciler.adapters.clocks import parse_clock_warp

    return parse_clock_warp(warp).now()


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


# -- workflows -------------------------------------------------------------------------------


def slot_workflow(
    name: str,
    markers: Path,
    *,
    policy: str = "Allow",
    steps: Sequence[float] = (0.2,),
    cron: str = "* * * * *",
) -> str:
    """A scheduled Workflow: a chain of steps, each appending "<run> <step>" to ``markers``
    when it starts and then sleeping its seconds."""
    dag = []
    for index, seconds in enumerate(steps):
        depends = f"      depends: [s{index - 1}]\n" if index else ""
        script = f'echo "$RUN_ID $STEP" >> {markers}; sleep {seconds:g}'
        dag.append(
            f"    - name: s{index}\n{depends}"
            "      spec:\n"
            "        stack: container\n"
            "        stackSpec:\n"
            "          image: docker.io/library/alpine:3.20\n"
            "          command: [sh]\n"
            f"          arguments: [-c, {json.dumps(script)}]\n"
        )
    return (
        "version: v2alpha\n"
        f"name: {name}\n"
        "type: workflow\n"
        "spec:\n"
        "  schedule:\n"
        f"    crons: [{json.dumps(cron)}]\n"
        f"    concurrencyPolicy: {policy}\n"
        "  use:\n"
        "    projection:\n"
        "      projections:\n"
        "        envVars:\n"
        "          - key: RUN_ID\n"
        '            value: "{{.defaultProjections.dataOsRunId}}"\n'
        "          - key: STEP\n"
        '            value: "{{.defaultProjections.stepName}}"\n'
        "  dag:\n" + "".join(dag)
    )


# -- daemons ---------------------------------------------------------------------------------


def kubeconfig(kube: KubeEmulator, path: Path) -> Path:
    """A kubeconfig pointing at the test API server."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": kube.url}}],
                "users": [{"name": "test", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    return path


@dataclass
class Target:
    """Where daemons of one test work: a backend, a manifests directory, a state directory."""

    backend: Backend
    repo: Path
    state_dir: Path
    logs: Path
    kubeconfig: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # RECONCILER_* for every daemon

    def settings(self) -> Settings:
        """The settings a daemon of this target runs with (for reading its backend)."""
        values: dict[str, Any] = {"backend": self.backend, "state_dir": self.state_dir}
        if self.kubeconfig is not None:
            values["kubeconfig"] = self.kubeconfig
        if "RECONCILER_CLOCK_WARP" in self.env:
            values["clock_warp"] = self.env["RECONCILER_CLOCK_WARP"]
        return Settings(**values)

    def store(self) -> RunBackend:
        """The backend as the daemons see it (the local store is safe to read beside them)."""
        return build_store(self.settings())

    def argv(self, command: str, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "reconciler", command, *args]
        if self.backend == "kubernetes":
            assert self.kubeconfig is not None
            argv += ["--backend", "kubernetes", "--kubeconfig", str(self.kubeconfig)]
        return argv

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "RECONCILER_STATUS_ENABLED": "false",
            "RECONCILER_HTTP_ADDRESS": "off",
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_KUBE_RUN_HISTORY": "1000000",  # every run stays countable
            **self.env,
            **(extra or {}),
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A one-shot command (``suspend``, ``get``) with the daemons' settings."""
        command, *rest = args
        argv = self.argv(command, *rest)
        if self.backend == "local":
            argv += ["--state-dir", str(self.state_dir)]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=PROJECT, env=self.environ()
        )


class DaemonProcess:
    """One ``reconciler daemon`` process; its stderr (the log) goes to a file."""

    serial = 0

    def __init__(
        self,
        target: Target,
        *,
        name: str = "daemon",
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        interval: float = 0.5,
    ) -> None:
        DaemonProcess.serial += 1
        target.logs.mkdir(parents=True, exist_ok=True)
        self.log_path = target.logs / f"{DaemonProcess.serial:03d}-{name}.log"
        self.name = name
        argv = target.argv(
            "daemon",
            "--repo",
            str(target.repo),
            "--state-dir",
            str(state_dir or target.state_dir),
            "--interval",
            f"{interval:g}",
        )
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT,
                env=target.environ(env),
                start_new_session=True,  # a Ctrl-C of pytest reaches the daemon only through us
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released; its step processes (local)
        live on as orphans, as after a crash."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, *, timeout: float = 90.0) -> int:
        """SIGTERM and wait: the clean stop. The exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(
                f"{self.name} did not stop within {timeout:g} s:\n{self.log()[-4000:]}"
            ) from None

    def wait_log(self, text: str, *, seconds: float = 60.0) -> float:
        """Wait until its log holds ``text``; the seconds it took."""

        def found() -> bool:
            if text in self.log():
                return True
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before logging {text!r}:\n"
                    f"{self.log()[-4000:]}"
                )
            return False

        return wait_for(found, seconds=seconds, what=f"{self.name} to log {text!r}", step=0.05)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts (append them); any still running at the end are killed."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.alive():
            daemon.process.kill()
            daemon.process.wait(timeout=30)


@pytest.fixture
def cluster(kube: KubeEmulator) -> KubeEmulator:
    """The test API server running Jobs' containers as local processes, with the daemon's
    namespace."""
    kube.job_outcome = kube.local_outcome()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "workflow-reconciler"}})
    return kube


def lease_holder(kube: KubeEmulator) -> str | None:
    lease = kube.get(*LEASE_PATH)
    return None if lease is None else (lease.get("spec") or {}).get("holderIdentity") or None


# -- accounting for slots --------------------------------------------------------------------


@dataclass
class SlotAccount:
    """What happened to every slot of some workflows."""

    slots: int = 0  # slots checked (each workflow: from its creation to its ledger)
    ran_once: int = 0  # a run that succeeded, each step having run exactly once
    skipped: int = 0  # recorded skipped, with a reason (missed while down, Forbid)
    failed: int = 0  # failed with a reason (e.g. the daemon died while it ran)
    cancelled: int = 0  # cancelled, with a reason
    lost: list[str] = field(default_factory=list)  # no run, one left active, or no reason
    duplicated: list[str] = field(default_factory=list)  # two runs, or a step run twice
    reasons: dict[str, int] = field(default_factory=dict)  # skip and failure reasons counted

    def figures(self) -> dict[str, Any]:
        data = asdict(self)
        data["lost"], data["duplicated"] = len(self.lost), len(self.duplicated)
        data["lost_examples"] = self.lost[:10]
        data["duplicated_examples"] = self.duplicated[:10]
        return data


def read_markers(path: Path) -> collections.Counter[tuple[str, str]]:
    """How many times each (run, step) started, from the markers file."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            run_id, _, step = line.strip().partition(" ")
            if run_id:
                counts[(run_id, step)] += 1
    return counts


def _reason_kind(reason: str) -> str:
    """A reason without its run ids, to count alike reasons together."""
    if reason.startswith("Forbid:"):
        return "Forbid: a run is still active"
    if reason.startswith("missed:"):
        return "missed: the scheduler was not running"
    return reason.split(":", 1)[0][:80]


def account_slots(
    store: RunBackend,
    keys: Sequence[WorkflowKey],
    markers: collections.Counter[tuple[str, str]],
    *,
    job_creates: Mapping[str, int] | None = None,
) -> SlotAccount:
    """Every every-minute slot of each workflow, from its creation to its ledger (the newest
    slot decided): run exactly once, or recorded skipped, failed or cancelled with a reason.

    Lost: a slot with no run, a run still pending or running, a run that ended without a
    reason, or one that succeeded without each step's marker. Duplicated: two runs for a
    slot, a step that started twice (two marker lines), a Job created twice, or a marker of
    a run the backend does not know.
    """
    account = SlotAccount()
    reasons: collections.Counter[str] = collections.Counter()
    known_runs: set[str] = set()
    workflows = {w.key: w for w in store.all_workflows()}
    ledgers = store.get_ledgers(list(keys))
    for key in keys:
        workflow = workflows[key]
        ledger = ledgers.get(key)
        runs: list[Run] = [
            r for r in store.runs_of(key, limit=1_000_000) if r.trigger == "schedule"
        ]
        by_slot: dict[datetime, list[Run]] = collections.defaultdict(list)
        for run in runs:
            assert run.slot is not None
            by_slot[run.slot.astimezone(UTC)].append(run)
            known_runs.add(run.run_id)
        end = ledger.last_slot.astimezone(UTC) if ledger is not None else workflow.created_at
        slot = floor_minute(workflow.created_at.astimezone(UTC)) + timedelta(minutes=1)
        expected = []
        while slot <= end:
            expected.append(slot)
            slot += timedelta(minutes=1)
        for extra in sorted(set(by_slot) - set(expected)):
            account.lost.append(f"{key} {extra:%H:%M}: a run for a slot outside its ledger")
        for slot in expected:
            account.slots += 1
            label = f"{key} {slot:%Y-%m-%d %H:%M}"
            found = by_slot.get(slot, [])
            if not found:
                account.lost.append(f"{label}: no run recorded")
                continue
            if len(found) > 1:
                account.duplicated.append(f"{label}: {len(found)} runs")
            run = found[0]
            if run.state not in TERMINAL:
                account.lost.append(f"{label}: run {run.run_id} left {run.state}")
                continue
            twice = [s.name for s in run.steps if markers[(run.run_id, s.name)] > 1]
            if twice:
                account.duplicated.append(f"{label}: steps {twice} of {run.run_id} ran twice")
            if run.state == "succeeded":
                missing = [s.name for s in run.steps if markers[(run.run_id, s.name)] != 1]
                if missing:
                    account.lost.append(f"{label}: succeeded but steps {missing} never started")
                else:
                    account.ran_once += 1
                continue
            if not run.reason:
                account.lost.append(f"{label}: run {run.run_id} {run.state} without a reason")
                continue
            reasons[f"{run.state}: {_reason_kind(run.reason)}"] += 1
            if run.state == "skipped":
                account.skipped += 1
            elif run.state == "failed":
                account.failed += 1
            else:
                account.cancelled += 1
    for name, creates in sorted((job_creates or {}).items()):
        if creates > 1:
            account.duplicated.append(f"Job {name} created {creates} times")
    prefixes = tuple(f"{key.split('/', 1)[1]}-" for key in keys)
    for run_id, step in sorted(markers):
        if run_id.startswith(prefixes) and run_id not in known_runs:
            account.duplicated.append(f"step {step} of {run_id} ran, but no such run is recorded")
    account.reasons = dict(reasons.most_common())
    return account


def job_creates(kube: KubeEmulator) -> dict[str, int]:
    """Successful Job creates by name (a 409 "already exists" is not one)."""
    counts: collections.Counter[str] = collections.Counter()
    for record in kube.requests:
        if record.verb == "create" and record.plural == "jobs" and 200 <= record.status < 300:
            counts[str(record.name or "")] += 1
    return dict(counts)


def active_runs(store: RunBackend, keys: Sequence[WorkflowKey]) -> list[Run]:
    return [r for key in keys for r in store.runs_of(key, states=["pending", "running"])]


# -- figures ---------------------------------------------------------------------------------


def report(name: str, figures: Mapping[str, Any]) -> None:
    """Print the figures (``pytest -s`` shows them) and write them to
    ``bench/out/reliability-<name>.json`` when that directory exists."""
    text = json.dumps(figures, indent=2, sort_keys=True, default=str)
    print(f"\nreliability figures, {name}:\n{text}")
    if BENCH_OUT.is_dir():
        (BENCH_OUT / f"reliability-{name}.json").write_text(text + "\n")
