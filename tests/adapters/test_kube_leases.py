"""Leader election between two instances on one Lease of the test API server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.adapters.kubernetes.client import KubeClient
from reconciler.adapters.kubernetes.leases import LeaderElector, LeaseTimings
from tests.kube.emulator import KubeEmulator
from tests.kube.schemas import validate_object

TIMINGS = LeaseTimings(lease_duration=15, renew_deadline=10, retry_period=2)


class Clock:
    """One clock per replica: they may disagree on wall time, never on durations."""

    def __init__(self, skew: timedelta = timedelta()) -> None:
        self.mono = 0.0
        self.skew = skew

    def now(self) -> datetime:
        return datetime(2026, 11, 29, tzinfo=UTC) + self.skew + timedelta(seconds=self.mono)

    def monotonic(self) -> float:
        return self.mono


def elector(kube: KubeEmulator, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(
        KubeClient(kube.api_client()),
        namespace="workflow-reconciler",
        name="workflow-reconciler-leader",
        identity=name,
        clock=clock,
        timings=TIMINGS,
    )


@pytest.fixture
def ns(kube: KubeEmulator) -> KubeEmulator:
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "workflow-reconciler"}})
    return kube


def test_one_leads_and_the_other_waits_until_the_lease_expires(ns: KubeEmulator) -> None:
    clock_a, clock_b = Clock(), Clock(skew=timedelta(hours=3))  # skew does not matter
    a, b = elector(ns, "a", clock_a), elector(ns, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s: b never gets it
        clock_a.mono += 2
        clock_b.mono += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert a.is_leader
    assert not b.is_leader
    # a dies: b waits a full lease duration on its own clock, then takes over
    clock_b.mono += 14
    assert not b.try_acquire_or_renew()
    clock_b.mono += 2
    assert b.try_acquire_or_renew()
    lease = ns.get(
        "coordination.k8s.io/v1/leases", "workflow-reconciler", "workflow-reconciler-leader"
    )
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert validate_object(lease) == []
    # a comes back: it is no longer the leader and cannot renew
    clock_a.mono += 20
    assert not a.is_leader
    assert not a.try_acquire_or_renew()


def test_a_release_hands_over_at_once(ns: KubeEmulator) -> None:
    a, b = elector(ns, "a", Clock()), elector(ns, "b", Clock())
    assert a.try_acquire_or_renew()
    a.release()
    assert not a.is_leader
    assert b.try_acquire_or_renew()


def test_racing_for_a_free_lease_elects_exactly_one(ns: KubeEmulator) -> None:
    electors = [elector(ns, f"r{i}", Clock()) for i in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(len(electors))

    def race(e: LeaderElector) -> None:
        barrier.wait()
        results.append(e.try_acquire_or_renew())

    threads = [threading.Thread(target=race, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_a_leader_that_cannot_renew_steps_down(ns: KubeEmulator) -> None:
    clock = Clock()
    a = elector(ns, "a", clock)
    assert a.try_acquire_or_renew()
    ns.inject(verb="get", plural="leases", status=500, times=1000)
    lost = threading.Event()
    stop = threading.Event()
    a.timings = LeaseTimings(lease_duration=0.9, renew_deadline=0.6, retry_period=0.05)
    a.client.backoff = type(a.client.backoff)(attempts=1)

    def advance() -> None:
        while not stop.is_set() and not lost.is_set():
            clock.mono += 0.05
            stop.wait(0.01)

    ticker = threading.Thread(target=advance)
    ticker.start()
    a.keep(stop, on_lost=lost.set)
    stop.set()
    ticker.join()
    assert lost.is_set()
    assert not a.is_leader


def test_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseTimings(lease_duration=5, renew_deadline=10, retry_period=2)
