"""Two replicas. On Kubernetes with leader election, the leader is SIGKILLed while it
schedules: the standby takes over within lease_duration + retry_period (measured, and
checked against a generous bound), and no slot runs twice. On the local backend a second
daemon on the same state directory is refused by its lock, with a message naming the holder,
and nothing runs twice; once the holder dies (SIGKILL, its steps still running as orphans)
a new daemon starts at once.

Both run every-minute workflows on a warped clock (``clock_warp``, 60x: a slot a second).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.names import WorkflowKey
from reconciler.ports import RunBackend
from tests.kube.emulator import KubeEmulator
from tests.reliability.conftest import (
    SEED,
    SOAK,
    DaemonProcess,
    Target,
    account_slots,
    active_runs,
    job_creates,
    kubeconfig,
    lease_holder,
    read_markers,
    report,
    slot_workflow,
    wait_for,
    warp_setting,
)

pytestmark = pytest.mark.timeout(7200 if SOAK else 300)


WORKFLOWS = (("pair-allow", "Allow", (0.3, 0.2)), ("pair-forbid", "Forbid", (1.5,)))
KEYS = [WorkflowKey(f"public/{name}") for name, _, _ in WORKFLOWS]
LEASE_DURATION = 6  # seconds; the Lease holds whole seconds
RENEW_DEADLINE = 4
RETRY_PERIOD = 0.5
TAKEOVER_TOLERANCE = 15.0  # seconds on top of lease_duration + retry_period: a loaded machine
ROUNDS = 12 if SOAK else 3  # leaders killed


def write_workflows(repo: Path, markers: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for name, policy, steps in WORKFLOWS:
        (repo / f"{name}.yaml").write_text(slot_workflow(name, markers, policy=policy, steps=steps))


def scheduled_runs(store: RunBackend) -> int:
    return sum(
        len([r for r in store.runs_of(key, limit=100_000) if r.trigger == "schedule"])
        for key in KEYS
    )


def settle_and_account(
    target: Target, leader: DaemonProcess, markers: Path, *, kube: KubeEmulator | None
) -> dict[str, Any]:
    """Suspend the schedules, let the runs end, stop the leader cleanly; the slot account."""
    store = target.store()
    for name, _, _ in WORKFLOWS:
        done = target.cli("suspend", "-n", name, "-w", "public")
        assert done.returncode == 0, done.stderr
    wait_for(lambda: not active_runs(store, KEYS), seconds=120, what="the last runs to end")
    assert leader.stop() == 0, leader.log()[-4000:]
    creates = job_creates(kube) if kube is not None else None
    account = account_slots(store, KEYS, read_markers(markers), job_creates=creates)
    assert account.lost == [], account.lost[:20]
    assert account.duplicated == [], account.duplicated[:20]
    assert account.ran_once > 0, account.figures()
    return account.figures()


def test_the_standby_takes_over_a_killed_leader_in_time_and_no_slot_runs_twice(
    cluster: KubeEmulator, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    markers = tmp_path / "markers.log"
    write_workflows(tmp_path / "repo", markers)
    target = Target(
        "kubernetes",
        tmp_path / "repo",
        tmp_path / "state",
        tmp_path / "logs",
        kubeconfig=kubeconfig(cluster, tmp_path / "kubeconfig"),
        env={
            "RECONCILER_CLOCK_WARP": warp_setting(60),
            "RECONCILER_LEADER_ELECTION": "true",
            "RECONCILER_LEASE_DURATION": str(LEASE_DURATION),
            "RECONCILER_RENEW_DEADLINE": str(RENEW_DEADLINE),
            "RECONCILER_RETRY_PERIOD": str(RETRY_PERIOD),
        },
    )
    store = target.store()
    rng = random.Random(SEED)

    def replica(identity: str) -> DaemonProcess:
        daemon = DaemonProcess(
            target,
            name=f"replica-{identity}",
            state_dir=tmp_path / f"state-{identity}",
            env={"RECONCILER_IDENTITY": identity},
        )
        daemons.append(daemon)
        return daemon

    leader, standby = replica("r0"), replica("r1")
    wait_for(lambda: lease_holder(cluster) is not None, seconds=60, what="a leader")
    if lease_holder(cluster) == "r1":
        leader, standby = standby, leader
    standby.wait_log("standby until")
    takeovers: list[float] = []
    for round_ in range(ROUNDS):
        # mid-schedule: right after the leader created runs for new slots
        seen = scheduled_runs(store)
        wait_for(lambda: scheduled_runs(store) >= seen + 3, seconds=60, what="new slots")  # noqa: B023
        time.sleep(rng.uniform(0.0, 1.0))
        killed = time.monotonic()
        leader.kill()
        identity = standby.name.removeprefix("replica-")
        takeovers.append(
            wait_for(
                lambda: lease_holder(cluster) == identity,  # noqa: B023
                seconds=LEASE_DURATION + RETRY_PERIOD + 60,
                what=f"{identity} to take over",
                step=0.02,
            )
        )
        assert time.monotonic() - killed >= takeovers[-1]
        leader, standby = standby, replica(f"r{round_ + 2}")
        standby.wait_log("standby until")
    figures = settle_and_account(target, leader, markers, kube=cluster)
    assert standby.stop() == 0, standby.log()[-4000:]  # a standby stops at once
    bound = LEASE_DURATION + RETRY_PERIOD
    figures.update(
        {
            "backend": "kubernetes",
            "leaders_killed": ROUNDS,
            "takeover_seconds": [round(t, 2) for t in takeovers],
            "takeover_max_seconds": round(max(takeovers), 2),
            "lease_duration_plus_retry_period": bound,
            "job_creates": sum(job_creates(cluster).values()),
        }
    )
    report("replicas-kubernetes", figures)
    assert max(takeovers) <= bound + TAKEOVER_TOLERANCE, figures


def test_a_second_local_daemon_on_the_same_state_is_refused_and_nothing_runs_twice(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    markers = tmp_path / "markers.log"
    write_workflows(tmp_path / "repo", markers)
    target = Target(
        "local",
        tmp_path / "repo",
        tmp_path / "state",
        tmp_path / "logs",
        env={"RECONCILER_CLOCK_WARP": warp_setting(60)},
    )

    def start(name: str) -> DaemonProcess:
        daemon = DaemonProcess(target, name=name)
        daemons.append(daemon)
        return daemon

    def refused_by(holder: DaemonProcess) -> str:
        second = start("second")
        code = second.process.wait(timeout=60)
        log = second.log()
        assert code != 0, log
        assert f"another daemon (pid {holder.pid}) already uses the state directory" in log, log
        assert "one daemon per state directory" in log, log
        return log

    store = target.store()
    first = start("first")
    runs: Callable[[], int] = lambda: scheduled_runs(store)  # noqa: E731
    wait_for(lambda: runs() >= 3, seconds=60, what="the first daemon to run slots")
    refused_by(first)
    wait_for(lambda: runs() >= 6, seconds=60, what="more slots")
    # A crash frees the lock at once, even while its steps live on as orphans.
    first.kill()
    third = start("third")
    seen = runs()
    wait_for(lambda: runs() >= seen + 3, seconds=60, what="the new daemon to run slots")
    message = refused_by(third)
    figures = settle_and_account(target, third, tmp_path / "markers.log", kube=None)
    figures.update({"backend": "local", "refused": 2, "message": message.strip().splitlines()[-1]})
    report("replicas-local", figures)
