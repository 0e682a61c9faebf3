"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

One replica holds the Lease and renews it every ``retry_period``; the others
try as often and take it only when it has not been renewed for
``lease_duration`` seconds of *their own* clock (they never compare their
clock with the holder's timestamps, so clock skew between nodes does not
matter). Every write carries the resourceVersion it read: of two replicas
racing for an expired Lease, one gets a 409 and stays a standby.

The holder gives up when it could not renew for ``renew_deadline`` seconds
(less than ``lease_duration``), so it stops working before anyone else may
start. A graceful stop releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.adapters.kubernetes.client import LEASES, Conflict, KubeClient, NotFound
from reconciler.ports import Clock, ReconcilerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTimings:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs retry_period < renew_deadline < lease_duration, got "
                f"{self.retry_period} / {self.renew_deadline} / {self.lease_duration}"
            )


def _micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        timings: LeaseTimings = LeaseTimings(),
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.timings = timings
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # our monotonic clock when it last changed
        self._renewed_at: float | None = None  # when we last renewed successfully
        self.transitions = 0

    @property
    def is_leader(self) -> bool:
        if self._renewed_at is None:
            return False
        return self.clock.monotonic() - self._renewed_at < self.timings.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when we hold the Lease afterwards."""
        now = self.clock.now()
        lease = self.client.get(LEASES, self.namespace, self.name)
        if lease is None:
            return self._create(now)
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed = record
            self._observed_at = self.clock.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_duration)
        expired = self.clock.monotonic() - self._observed_at >= duration  # on our own clock
        if holder and holder != self.identity and not expired:
            return False
        taking_over = holder != self.identity
        new_spec: dict[str, Any] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timings.lease_duration),
            "renewTime": _micro_time(now),
        }
        if taking_over:
            new_spec["acquireTime"] = _micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": new_spec}
        try:
            self.client.request("PUT", LEASES, namespace=self.namespace, name=self.name, body=body)
        except Conflict:
            return False  # someone else wrote first: read again next round
        self._renewed_at = self.clock.monotonic()
        if taking_over:
            self.transitions += 1
            log.info("%s now leads (lease %s/%s)", self.identity, self.namespace, self.name)
        return True

    def release(self) -> None:
        """Give the Lease up (graceful stop), so a standby need not wait for it to expire."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.client.get(LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            self.client.request(
                "PUT",
                LEASES,
                namespace=self.namespace,
                name=self.name,
                body={**lease, "spec": spec},
            )
        except (Conflict, NotFound):
            log.info("lease %s changed while releasing it; it expires on its own", self.name)
        except ReconcilerError as exc:
            log.warning("could not release lease %s (%s); it expires on its own", self.name, exc)

    def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.timings.lease_duration),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            self.client.create(LEASES, self.namespace, body)
        except Conflict:
            return False
        self._renewed_at = self.clock.monotonic()
        self.transitions += 1
        log.info("%s now leads (new lease %s/%s)", self.identity, self.namespace, self.name)
        return True

    # -- loops ----------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Block until leading (True) or stopped (False), trying every retry_period."""
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except ReconcilerError as exc:
                log.warning("leader election: %s", exc)
            stop.wait(self.timings.retry_period)
        return False

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew until stopped, or until renewing failed for renew_deadline: then on_lost()."""
        while not stop.wait(self.timings.retry_period):
            try:
                self.try_acquire_or_renew()
            except ReconcilerError as exc:
                log.warning("renewing the lease failed: %s", exc)
            if not self.is_leader:
                log.error("%s lost the lease %s: stopping", self.identity, self.name)
                on_lost()
                return

    def keep_in_background(
        self, stop: threading.Event, on_lost: Callable[[], None]
    ) -> threading.Thread:
        thread = threading.Thread(
            target=self.keep, args=(stop, on_lost), name="leader-election", daemon=True
        )
        thread.start()
        return thread
