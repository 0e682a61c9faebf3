"""Orchestration overhead per step: a 1,000-step chain of ``true`` on the local backend,
against spawning the same 1,000 processes bare, one after the other.

Usage: python -m bench.dag_overhead [STEPS]

The chain runs the way the daemon runs it: the ``Executor`` over a
``LocalStore`` and a ``LocalStepRunner`` in a fresh state directory, each step
stored when it starts and when it ends, with its own directory and log file,
counted by the daemon's Prometheus recorder and logged through the daemon's log
handler (JSON, secrets redacted as they are set; written to /dev/null here).

The bare spawns get the environment a step gets (``PATH``, ``LANG``, ``HOME``:
with the caller's longer ``PATH`` each spawn would try more directories than a
step does). They are timed before and after the chain and averaged, so a machine
that gets busier or quieter during the run moves both sides alike.

Creating a step's directory and log file is part of the overhead, and what it
costs depends on the filesystem more than on anything here: ext4 without a
journal, for one, scans past every inode freed in the last minute for each one
it allocates, so a run started within a minute of a mass deletion near the
state directory (another run's clean-up: this one deletes two files per step
when it ends) pays up to a millisecond per step more. That time is system CPU
time of this process: the CPU figures of the chain show it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.runner import DEFAULT_PATH, LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.app.logs import configure_logging
from reconciler.app.metrics import PrometheusRecorder
from reconciler.app.running import Executor
from reconciler.app.serving import all_secret_values
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision, RunId
from reconciler.core.redaction import LiveRedactor
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


def bare_spawns(steps: int, env: Mapping[str, str]) -> float:
    """Seconds to run ``true`` ``steps`` times, one after the other."""
    started = time.perf_counter()
    for _ in range(steps):
        subprocess.run(["true"], env=env, check=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def daemon_logging(secrets: SecretStore) -> Iterator[None]:
    """The daemon's log handler at its default level, to /dev/null; the caller's after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with open(os.devnull, "w") as sink:
        redact = LiveRedactor(lambda: all_secret_values(secrets), stamp=secrets.stamp)
        configure_logging(level="info", log_format="json", redact=redact, stream=sink)
        try:
            yield
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)


def main(steps: int = 1000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        # What LocalStepRunner.start gives a step (HOME is its own directory there).
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": tmp}
        bare_before = bare_spawns(steps, env)
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
        secrets = SecretStore(state)
        executor = Executor(
            store,
            LocalStepRunner(state, secrets=secrets, clock=clock),
            clock=clock,
            recorder=PrometheusRecorder(workflow_states=store.workflow_states),
        )
        with daemon_logging(secrets):
            executor.notify()
            cpu = os.times()
            started = time.perf_counter()
            executor.step(wait=0.5)
            while executor.runs:
                executor.step(wait=0.5)
            ours = time.perf_counter() - started
            cpu_after = os.times()
        current = store.get_run("public", "chain-m1")
        if current is None or current.state != "succeeded":
            raise SystemExit(f"the benchmark run did not succeed: {current}")
        store.close()
        bare_after = bare_spawns(steps, env)
    bare = (bare_before + bare_after) / 2
    overhead_ms = (ours - bare) / steps * 1000
    user_ms = (cpu_after.user - cpu.user) / steps * 1000
    system_ms = (cpu_after.system - cpu.system) / steps * 1000
    print(
        f"{steps}-step chain: {ours:.2f} s; bare spawns: {bare:.2f} s (before {bare_before:.2f} "
        f"s, after {bare_after:.2f} s); overhead {overhead_ms:.2f} ms per step; "
        f"ratio {ours / bare:.2f}x; daemon CPU per step: user {user_ms:.2f} ms, "
        f"system {system_ms:.2f} ms"
    )
    return {
        "steps": steps,
        "dag_s": ours,
        "bare_s": bare,
        "bare_before_s": bare_before,
        "bare_after_s": bare_after,
        "overhead_ms_per_step": overhead_ms,
        "user_cpu_ms_per_step": user_ms,
        "system_cpu_ms_per_step": system_ms,
    }


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
