"""Orchestration overhead per step: a 1,000-step chain of ``true`` on the local backend,
against spawning the same 1,000 processes bare, one after the other.

Usage: python -m bench.dag_overhead [STEPS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.runner import LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.app.running import Executor
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import new_run
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply


def chain_manifest(steps: int) -> str:
    lines = ["version: v2alpha", "name: chain", "type: workflow", "spec:", "  dag:"]
    for i in range(steps):
        lines.append(f"    - name: s{i}")
        if i:
            lines.append(f"      depends: [s{i - 1}]")
        lines += [
            "      spec:",
            "        stack: container",
            '        stackSpec: {image: alpine:3.20, command: ["true"]}',
        ]
    return "\n".join(lines) + "\n"


def main(steps: int = 1000) -> dict[str, float]:
    started = time.perf_counter()
    for _ in range(steps):
        subprocess.run(["true"], check=True)
    bare = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        clock = SystemClock()
        store = LocalStore(state, clock=clock)
        (loaded,) = load_manifest_file(
            "chain.yaml", chain_manifest(steps).encode(), workspace="public", variables={}
        ).workflows
        desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="c")
        store.apply_workflow(
            WorkflowApply(desired, source="bench", revision=Revision("r"), owner="b")
        )
        run = new_run(
            workspace="public",
            run_id=RunId("chain-m1"),
            name="chain",
            trigger="manual",
            requested_by="bench",
            revision=Revision("r"),
            spec=desired.spec,
            spec_hash=desired.spec_hash,
            now=clock.now(),
        )
        store.create_runs([run])
        executor = Executor(
            store, LocalStepRunner(state, secrets=SecretStore(state), clock=clock), clock=clock
        )
        executor.notify()
        started = time.perf_counter()
        executor.step(wait=0.5)
        while executor.runs:
            executor.step(wait=0.5)
        ours = time.perf_counter() - started
        current = store.get_run("public", "chain-m1")
        if current is None or current.state != "succeeded":
            raise SystemExit(f"the benchmark run did not succeed: {current}")
    overhead_ms = (ours - bare) / steps * 1000
    print(
        f"{steps}-step chain: {ours:.2f} s; bare spawns: {bare:.2f} s; "
        f"overhead {overhead_ms:.2f} ms per step; ratio {ours / bare:.2f}x"
    )
    return {"steps": steps, "dag_s": ours, "bare_s": bare, "overhead_ms_per_step": overhead_ms}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
