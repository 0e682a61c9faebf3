"""Scheduling lag and idle CPU: N every-minute workflows over several time zones,
a Scheduler on the real clock, for a few minute boundaries.

The loop is the daemon's scheduler loop: ``tick()``, then sleep the wait it
returns. Lag is ``run.created_at - slot`` over every created run (the moment
the scheduler decided the run); the moment the runs were committed (visible to
the executor) is reported too. Idle CPU is the process CPU time spent outside
the ticks that created runs (sleeping, and ticks that found nothing due), over
the wall time of the same stretches.

Usage: python -m bench.scheduling [COUNT [BOUNDARIES]]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.generate import scheduled_manifests
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.store import LocalStore
from reconciler.app.scheduling import Scheduler
from reconciler.core.loading import load_manifest_set
from reconciler.core.names import Revision
from reconciler.core.repoconfigs import RepoConfig
from reconciler.core.slots import next_fire_times
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply


def apply_scheduled(store: LocalStore, count: int) -> None:
    """Apply ``count`` generated every-minute workflows in one transaction."""
    loaded = load_manifest_set(scheduled_manifests(count), config=RepoConfig(), variables={})
    if loaded.errors or len(loaded.workflows) != count:
        raise SystemExit(f"the scheduling workload did not load: {loaded.errors[:3]}")
    store.apply_many(
        [
            WorkflowApply(
                DesiredWorkflow.from_manifest(w.manifest, workspace=w.workspace, path=w.path),
                source="bench",
                revision=Revision("r"),
                owner="bench",
            )
            for w in loaded.workflows.values()
        ]
    )


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def expected_runs(store: LocalStore, slot: datetime) -> int:
    """How many applied workflows fire at ``slot`` (each schedule computed once)."""
    fires: dict[tuple[tuple[str, ...], str], bool] = {}
    total = 0
    for workflow in store.all_workflows():
        schedule = workflow.spec["spec"]["schedule"]
        which = (tuple(schedule["crons"]), schedule["timezone"])
        if which not in fires:
            after = slot - timedelta(seconds=1)
            fires[which] = next_fire_times(which[0], which[1], after=after, count=1) == [slot]
        total += fires[which]
    return total


def main(count: int = 10_000, boundaries: int = 3) -> dict[str, Any]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "state", clock=clock)
        apply_scheduled(store, count)
        scheduler = Scheduler(store, clock=clock)
        scheduler.refresh()
        _, wait = scheduler.tick()  # starts every workflow's ledger
        lags: list[float] = []
        committed: list[float] = []
        ticks: list[float] = []
        tick_cpu: list[float] = []
        per_boundary: list[int] = []
        expected: list[int] = []
        idle_cpu = idle_wall = 0.0
        while len(per_boundary) < boundaries:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            time.sleep(wait)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            decided, wait = scheduler.tick()
            done = datetime.now(UTC)
            cpu2, wall2 = time.process_time(), time.perf_counter()
            idle_cpu, idle_wall = idle_cpu + cpu1 - cpu0, idle_wall + wall1 - wall0
            if not decided.created and not decided.skipped:  # nothing was due: still idle
                idle_cpu, idle_wall = idle_cpu + cpu2 - cpu1, idle_wall + wall2 - wall1
                continue
            if decided.skipped:
                raise SystemExit(f"{len(decided.skipped)} runs were skipped, none should be")
            ticks.append(wall2 - wall1)
            tick_cpu.append(cpu2 - cpu1)
            per_boundary.append(len(decided.created))
            slots = {run.slot for run in decided.created}
            for run in decided.created:
                assert run.slot is not None
                lags.append((run.created_at - run.slot).total_seconds())
                committed.append((done - run.slot).total_seconds())
            expected.append(sum(expected_runs(store, slot) for slot in slots if slot))
        store.close()
    if per_boundary != expected:
        raise SystemExit(f"runs created per boundary {per_boundary}, expected {expected}")
    result: dict[str, Any] = {
        "workflows": count,
        "boundaries": boundaries,
        "runs_per_boundary": per_boundary,
        "lag_p50_s": statistics.median(lags),
        "lag_p99_s": percentile(lags, 0.99),
        "lag_max_s": max(lags),
        "committed_lag_p50_s": statistics.median(committed),
        "committed_lag_p99_s": percentile(committed, 0.99),
        "committed_lag_max_s": max(committed),
        "busy_tick_max_s": max(ticks),
        "busy_tick_cpu_max_s": max(tick_cpu),  # wall minus this: waits (disk, other processes)
        "idle_cpu_s": idle_cpu,
        "idle_wall_s": idle_wall,
        "idle_cpu_percent": 100 * idle_cpu / idle_wall,
    }
    print(
        f"{count} workflows, {boundaries} minute boundaries ({sum(per_boundary)} runs): "
        f"lag p50 {result['lag_p50_s'] * 1000:.1f} ms, p99 {result['lag_p99_s'] * 1000:.1f} ms, "
        f"max {result['lag_max_s'] * 1000:.1f} ms; committed p99 "
        f"{result['committed_lag_p99_s']:.2f} s; busy tick max {max(ticks):.2f} s "
        f"({max(tick_cpu):.2f} s CPU); idle CPU {result['idle_cpu_percent']:.3f} % "
        f"of {idle_wall:.0f} s"
    )
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
