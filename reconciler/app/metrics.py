"""Prometheus metrics of the daemon: one registry, served at ``/metrics``.

Everything is named ``reconciler_*`` with Prometheus' unit suffixes. The
app and the adapters report through the ``Recorder`` port
(``count``/``observe``/``set`` by name without the prefix); gauges that
describe state (workflows by state) are read from the backend at scrape
time, so they are never stale.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "reconciler_"
# Seconds: a pass, a run and a step span milliseconds to hours.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

_COUNTERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "syncs_total": ("Reconcile passes, by result", ("result",)),
    "runs_total": ("Runs that ended, by result", ("result",)),
    "steps_total": ("Steps that ended, by result", ("result",)),
    "git_errors_total": ("Failed git network operations, by operation", ("operation",)),
    "status_pushes_total": ("Status branch pushes, by result", ("result",)),
    "status_push_retries_total": ("Status pushes retried after losing a race", ()),
    "webhooks_total": ("Webhook deliveries, by source and result", ("source", "result")),
}
_HISTOGRAMS: Mapping[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "sync_duration_seconds": ("Duration of a reconcile pass", ("result",), DURATION_BUCKETS),
    "run_duration_seconds": ("Duration of a run, start to end", ("result",), DURATION_BUCKETS),
    "step_duration_seconds": ("Duration of a step", ("result",), DURATION_BUCKETS),
    "schedule_lag_seconds": (
        "Start of a scheduled run minus its nominal slot",
        (),
        LAG_BUCKETS,
    ),
    "git_fetch_duration_seconds": ("Duration of a git fetch", (), DURATION_BUCKETS),
}
_GAUGES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "leader": ("1 when this replica leads (or runs without leader election), else 0", ()),
    "last_sync_timestamp_seconds": ("When the last pass ended (Unix time)", ()),
}


class PrometheusRecorder:
    """The ``Recorder`` of the daemon; unknown names are a programming error (raised)."""

    def __init__(self, *, workflow_states: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counters = {
            name: Counter(PREFIX + name.removesuffix("_total"), doc, labels, registry=self.registry)
            for name, (doc, labels) in _COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)
            for name, (doc, labels, buckets) in _HISTOGRAMS.items()
        }
        self._gauges = {
            name: Gauge(PREFIX + name, doc, labels, registry=self.registry)
            for name, (doc, labels) in _GAUGES.items()
        }
        self._revision = Info(
            PREFIX + "applied_revision", "The git revision last synced", registry=self.registry
        )
        if workflow_states is not None:
            self.registry.register(_WorkflowStates(workflow_states))

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        histogram = self._histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(max(0.0, value))

    def set(self, name: str, value: float, **labels: str) -> None:
        gauge = self._gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def watch_notifier(self, counters: Callable[[], Any]) -> None:
        """``reconciler_notifications_total{target,kind,result}`` and retries, read from the
        notifier when scraped."""
        self.registry.register(_Notifications(counters))

    def applied_revision(self, revision: str, source: str) -> None:
        self._revision.info({"revision": revision, "source": source})

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _Notifications(Collector):
    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        sent = CounterMetricFamily(
            PREFIX + "notifications",
            "Notifications of run results, by target, kind and result",
            labels=["target", "kind", "result"],
        )
        retries = CounterMetricFamily(
            PREFIX + "notification_retries", "Notification deliveries tried again"
        )
        dropped = CounterMetricFamily(
            PREFIX + "notifications_dropped", "Notifications dropped from a full queue"
        )
        counters = self.read()
        for (target, kind), value in sorted(counters.delivered.items()):
            sent.add_metric([target, kind, "delivered"], value)
        for (target, kind), value in sorted(counters.failed.items()):
            sent.add_metric([target, kind, "failed"], value)
        retries.add_metric([], counters.retries)
        dropped.add_metric([], counters.dropped)
        return [sent, retries, dropped]


class _WorkflowStates(Collector):
    """``reconciler_workflows{state}``, read from the backend when scraped."""

    def __init__(self, read: Callable[[], Mapping[str, int]], *, wait: float = 2.0) -> None:
        self.read = read
        self.wait = wait
        self._last: Mapping[str, int] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(PREFIX + "workflows", "Applied workflows, by state")]

    def _refresh(self) -> None:
        try:
            counts = self.read()
        except Exception:  # a scrape must not fail because the backend hiccupped: say so
            log.exception("reading workflow states for /metrics failed")
            return
        with self._lock:
            self._last = counts

    def collect(self) -> Iterable[Metric]:
        """Fresh counts, or within ``wait`` seconds the last ones: a backend that is busy
        (a locked database) never makes a scrape hang."""
        family = GaugeMetricFamily(
            PREFIX + "workflows", "Applied workflows, by state", labels=["state"]
        )
        with self._lock:
            reader = self._reader
            if reader is None or not reader.is_alive():
                reader = self._reader = threading.Thread(target=self._refresh, daemon=True)
                reader.start()
        reader.join(self.wait)
        with self._lock:
            counts = self._last
        if counts is None:
            return [family]
        for state in ("creating", "active", "running", "succeeded", "failed"):
            family.add_metric([state], counts.get(state, 0))
        return [family]
