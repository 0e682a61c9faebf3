"""1,000 run reports rendered, committed and pushed to the status branch as one batch.

Usage: python -m bench.status_batch [RUNS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.dag_overhead import chain_manifest
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.store import LocalStore
from reconciler.adapters.statusbranch import StatusWriter
from reconciler.app.reporting import ReportingOptions, StatusReporter
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import new_run, start_run, step_finished, step_started
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply


def main(count: int = 1000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = root / "remote.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
        clock = SystemClock()
        store = LocalStore(root / "state", clock=clock)
        (loaded,) = load_manifest_file(
            "c.yaml", chain_manifest(3).encode(), workspace="public", variables={}
        ).workflows
        desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="c")
        store.apply_workflow(WorkflowApply(desired, source="b", revision=Revision("r"), owner="b"))
        start = datetime(2026, 11, 28, tzinfo=UTC)
        runs = []
        for i in range(count):
            at = start + timedelta(minutes=i)
            run = new_run(
                workspace="public",
                run_id=RunId(f"chain-m{i:012d}"),
                name="chain",
                trigger="manual",
                requested_by="bench",
                revision=Revision("r"),
                spec=desired.spec,
                spec_hash=desired.spec_hash,
                now=at,
            )
            run = start_run(run, now=at)
            for step in ("s0", "s1", "s2"):
                run = step_finished(step_started(run, step, now=at), step, exit_code=0, now=at)
            runs.append(run)
        store.create_runs(runs)
        writer = StatusWriter(str(bare), source_branch="main", cache_dir=root / "cache")
        reporter = StatusReporter(
            store,
            writer,
            clock=clock,
            read_log=lambda *_: b"ok\n",
            secret_values=list,
            options=ReportingOptions(keep_succeeded=count, batch_limit=count),
        )
        started = time.perf_counter()
        flushed = reporter.flush()
        elapsed = time.perf_counter() - started
        if flushed is None or flushed.runs != count:
            raise SystemExit(f"expected {count} runs in one batch, got {flushed}")
    print(f"{count} run reports ({flushed.files} files) committed and pushed: {elapsed:.2f} s")
    return {"runs": count, "seconds": elapsed, "files": flushed.files}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
