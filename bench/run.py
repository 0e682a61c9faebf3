"""The benchmark suite of issue 8: every measure with its baseline, in one run.

Generates the workloads, runs each measure module's ``main`` (baselines are
taken inside the same call), prints a table of figure, baseline, ratio, target
and whether it was met, and writes the raw figures to a JSON file. A measure
that fails is reported as such and the others still run.

Usage: python -m bench.run [--quick] [--out bench/out/results.json]
(``make bench`` runs the full sizes; ``--quick`` is a smoke run with small ones.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    dag_overhead,
    kube_requests,
    memory,
    scheduling,
    status_batch,
    sync_scale,
    validate_files,
)

DEFAULT_OUT = Path("bench/out/results.json")


@dataclass(frozen=True)
class Sizes:
    manifests: int  # cold sync, no-op poll, one-file change
    kube: int  # workflows on the Kubernetes test API server
    validate: int  # reconciler validate (no target; for reference)
    scheduled: int  # every-minute workflows
    boundaries: int  # minute boundaries the scheduler is watched over
    steps: int  # DAG chain length
    reports: int  # run reports in one status batch
    memory: int  # applied workflows in the daemon-like process


FULL = Sizes(10_000, 1_000, 1_000, 10_000, 3, 1_000, 1_000, 10_000)
QUICK = Sizes(300, 100, 100, 1_000, 1, 50, 100, 300)


@dataclass
class Row:
    measure: str
    figure: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: no target


@dataclass
class Outcome:
    name: str
    seconds: float
    result: dict[str, Any] | None
    error: str | None


def run_measure(name: str, func: Callable[[], dict[str, Any]]) -> Outcome:
    """Run one measure; a failure (SystemExit or any error) is recorded, not raised."""
    print(f"--- {name}", flush=True)
    gc.collect()
    started = time.perf_counter()
    try:
        result = func()
    except (Exception, SystemExit) as exc:
        detail = str(exc) if isinstance(exc, SystemExit) else traceback.format_exc(limit=3)
        print(f"{name} failed: {detail}", flush=True)
        return Outcome(name, time.perf_counter() - started, None, detail)
    return Outcome(name, time.perf_counter() - started, result, None)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def failed_row(measure: str, target: str, outcome: Outcome) -> Row:
    return Row(
        measure, f"failed: {(outcome.error or '').strip().splitlines()[-1]}", "", "", target, False
    )


def rows_for(outcomes: dict[str, Outcome], sizes: Sizes) -> list[Row]:
    """The table: one row per target of issue 8 (and the reference measures)."""
    rows: list[Row] = []
    sync = outcomes["sync_scale"]
    n = f"{sizes.manifests:,}"
    if sync.result is None:
        rows += [
            failed_row(f"cold sync of {n} manifests", "<= 1.0x", sync),
            failed_row("no-op poll", "<= 1.5x, 0 writes, 0 parses", sync),
            failed_row("one file changed", "1 parsed, <= 150 ms beyond the fetch", sync),
        ]
    else:
        r = sync.result
        rows.append(
            Row(
                f"cold sync of {n} manifests",
                secs(r["cold_sync_s"]),
                f"CSafeLoader parse {secs(r['csafeloader_s'])}",
                f"{r['cold_ratio']:.2f}x",
                "<= 1.0x",
                r["cold_ratio"] <= 1.0,
            )
        )
        rows.append(
            Row(
                "no-op poll (remote unchanged)",
                f"{ms(r['noop_poll_s'])}, {r['noop_writes']} writes, {r['noop_parses']} parses",
                f"git ls-remote {ms(r['ls_remote_s'])}",
                f"{r['noop_ratio']:.2f}x",
                "<= 1.5x, 0 writes, 0 parses",
                r["noop_ratio"] <= 1.5 and r["noop_writes"] == 0 and r["noop_parses"] == 0,
            )
        )
        beyond = r["change_beyond_fetch_s"]
        rows.append(
            Row(
                "one file changed",
                f"{ms(beyond)} beyond the fetch, {r['change_parses']} parsed "
                f"(sync {ms(r['change_sync_s'])})",
                f"fetch alone {ms(r['change_fetch_s'])}",
                f"{r['change_sync_s'] / r['change_fetch_s']:.1f}x",
                "1 parsed, <= 150 ms beyond the fetch",
                r["change_parses"] == 1 and beyond <= 0.150,
            )
        )
    sched = outcomes["scheduling"]
    what = f"{sizes.scheduled:,} workflows every minute"
    if sched.result is None:
        rows += [
            failed_row(f"{what}: p99 lag", "<= 1 s", sched),
            failed_row(f"{what}: idle CPU", "<= 2 %", sched),
        ]
    else:
        r = sched.result
        rows.append(
            Row(
                f"{what}: p99 lag (created_at - slot)",
                f"{ms(r['lag_p99_s'])} (p50 {ms(r['lag_p50_s'])}, max {ms(r['lag_max_s'])})",
                "the nominal slot",
                "",
                "<= 1 s",
                r["lag_p99_s"] <= 1.0,
            )
        )
        rows.append(
            Row(
                f"{what}: p99 lag until committed",
                f"{secs(r['committed_lag_p99_s'])} (max {secs(r['committed_lag_max_s'])})",
                "the nominal slot",
                "",
                "<= 1 s",
                r["committed_lag_p99_s"] <= 1.0,
            )
        )
        rows.append(
            Row(
                f"{what}: idle CPU between slots",
                f"{r['idle_cpu_percent']:.3f} %",
                f"{r['idle_wall_s']:.0f} s idle wall time",
                "",
                "<= 2 %",
                r["idle_cpu_percent"] <= 2.0,
            )
        )
    dag = outcomes["dag_overhead"]
    what = f"{sizes.steps:,}-step DAG of true (local)"
    if dag.result is None:
        rows.append(failed_row(what, "<= 2 ms per step", dag))
    else:
        r = dag.result
        rows.append(
            Row(
                what,
                f"{secs(r['dag_s'])}, overhead {r['overhead_ms_per_step']:.2f} ms per step",
                f"bare spawns {secs(r['bare_s'])}",
                f"{r['dag_s'] / r['bare_s']:.2f}x",
                "<= 2 ms per step",
                r["overhead_ms_per_step"] <= 2.0,
            )
        )
    status = outcomes["status_batch"]
    what = f"{sizes.reports:,} run reports in one status batch"
    if status.result is None:
        rows.append(failed_row(what, "<= 2 s", status))
    else:
        r = status.result
        rows.append(
            Row(
                what,
                f"{secs(r['seconds'])} ({r['files']} files)",
                "",
                "",
                "<= 2 s",
                r["seconds"] <= 2.0,
            )
        )
    mem = outcomes["memory"]
    what = f"daemon memory, {sizes.memory:,} applied workflows"
    if mem.result is None:
        rows.append(failed_row(what, "<= 200 MB", mem))
    else:
        r = mem.result
        rows.append(
            Row(
                what,
                f"{r['rss_mb']:.0f} MB ({r['daemon_rss_mb']:.0f} + {r['helpers']} helper "
                f"processes {r['helpers_rss_mb']:.0f}); after a restart "
                f"{r['restart_rss_mb']:.0f} MB",
                f"interpreter with imports {r['base_rss_mb']:.0f} MB",
                "",
                "<= 200 MB",
                r["rss_mb"] <= 200,
            )
        )
    kube = outcomes["kube_requests"]
    what = f"Kubernetes: forced no-op pass, {sizes.kube:,} Workflows"
    if kube.result is None:
        rows.append(failed_row(what, "0 writes", kube))
    else:
        r = kube.result
        rows.append(
            Row(
                what,
                f"{ms(r['forced_noop_s'])}, {r['forced_noop_requests']} requests, "
                f"{r['forced_noop_writes']} writes; unchanged remote: "
                f"{r['noop_poll_requests']} requests",
                f"one list of every Workflow {ms(r['bare_list_s'])}",
                f"{r['forced_noop_ratio']:.2f}x",
                "0 writes",
                r["forced_noop_writes"] == 0 and r["noop_poll_requests"] == 0,
            )
        )
    val = outcomes["validate_files"]
    what = f"reconciler validate, {sizes.validate:,} files (reference)"
    if val.result is None:
        rows.append(failed_row(what, "", val))
    else:
        r = val.result
        rows.append(
            Row(
                what,
                secs(r["validate_s"]),
                f"CSafeLoader parse {secs(r['csafeloader_s'])}",
                f"{r['ratio']:.2f}x",
                "",
                None,
            )
        )
    return rows


def render(rows: list[Row]) -> str:
    """The rows as a Markdown table (readable in a terminal and pasteable into the README)."""
    header = ("measure", "figure", "baseline", "ratio", "target", "met")
    cells = [header] + [
        (
            r.measure,
            r.figure,
            r.baseline,
            r.ratio,
            r.target,
            {True: "yes", False: "no", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git.stdout.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="the benchmark suite of issue 8"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON results file")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    # The DAG runs first: it creates two files per step, and on some filesystems
    # (ext4 without a journal) each creation scans the inodes freed in the last
    # minutes, so right after another measure deleted 10,000 files it would time
    # that measure's clean-up. The others do not create files per item.
    measures: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("dag_overhead", lambda: dag_overhead.main(sizes.steps)),
        ("sync_scale", lambda: sync_scale.main(sizes.manifests)),
        ("scheduling", lambda: scheduling.main(sizes.scheduled, sizes.boundaries)),
        ("status_batch", lambda: status_batch.main(sizes.reports)),
        ("memory", lambda: memory.main(sizes.memory)),
        ("validate_files", lambda: validate_files.main(sizes.validate)),
        ("kube_requests", lambda: kube_requests.main(sizes.kube)),
    ]
    outcomes = {name: run_measure(name, func) for name, func in measures}
    rows = rows_for(outcomes, sizes)
    table = render(rows)
    print()
    print(table)
    report = {
        "started_at": started.isoformat(),
        "quick": args.quick,
        "sizes": asdict(sizes),
        "machine": machine(),
        "measures": {
            name: {"seconds": o.seconds, "result": o.result, "error": o.error}
            for name, o in outcomes.items()
        },
        "rows": [asdict(r) for r in rows],
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    targets = [r for r in rows if r.met is not None]
    print(f"\n{sum(bool(r.met) for r in targets)} of {len(targets)} targets met; wrote {args.out}")
    return 1 if any(o.error for o in outcomes.values()) else 0  # a missed target is a result


if __name__ == "__main__":
    sys.exit(main())
