"""API requests and time of syncs on the Kubernetes backend (issue 6's figure).

The daemon talks HTTP through the official client to the test API server of
tests/kube (in this process, on 127.0.0.1). Measured for N generated
manifests: a cold sync, a no-op poll (the remote did not move), a forced
no-op pass (planned again at the same revision) and one changed file; each
with its requests and writes. The baseline is one bare list of every
Workflow (the least a full pass must read), so the ratio is cost per pass
over cost of that read.

Usage: python -m bench.kube_requests [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.generate import manifests
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.kubernetes.backend import KubernetesBackend
from reconciler.adapters.kubernetes.client import KubeClient
from reconciler.adapters.kubernetes.objects import MANAGED_SELECTOR, WORKFLOWS
from reconciler.app.syncing import Syncer, SyncOptions
from tests.kube.emulator import KubeEmulator

PROJECT = Path(__file__).resolve().parent.parent


def main(count: int = 1000) -> dict[str, Any]:
    kube = KubeEmulator()
    kube.start()
    kube.load_crds(sorted((PROJECT / "deploy" / "crds").glob("*.reconciler.dev.yaml")))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for path, data in manifests(count).items():
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            client = KubeClient(kube.api_client())
            backend = KubernetesBackend(
                client, namespace="workflow-reconciler", owner="bench", clock=SystemClock()
            )
            syncer = Syncer(
                DirectorySource(root),
                backend,
                clock=SystemClock(),
                options=SyncOptions(owner="bench", environ={}),
                sleep=time.sleep,
            )
            result: dict[str, Any] = {"workflows": count}

            def measure(name: str, **kwargs: Any) -> None:
                kube.reset_counts()
                started = time.perf_counter()
                outcome = syncer.sync(**kwargs)
                result[f"{name}_s"] = time.perf_counter() - started
                result[f"{name}_requests"] = kube.count()
                result[f"{name}_writes"] = kube.count(write=True)
                result[f"{name}_result"] = outcome.result

            measure("cold")
            measure("noop_poll")
            measure("forced_noop", force=True)
            first = sorted(root.rglob("*.yaml"))[0]
            first.write_text(first.read_text().replace("Generated workflow", "Changed workflow"))
            measure("one_change")
            kube.reset_counts()
            started = time.perf_counter()
            client.list(WORKFLOWS, label_selector=MANAGED_SELECTOR)
            result["bare_list_s"] = time.perf_counter() - started
            result["bare_list_requests"] = kube.count()
            result["forced_noop_ratio"] = result["forced_noop_s"] / result["bare_list_s"]
            syncer.close()
            return result
    finally:
        kube.stop()


if __name__ == "__main__":
    figures = main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    n = figures["workflows"]
    for name in ("cold", "noop_poll", "forced_noop", "one_change"):
        print(
            f"{name:12} {n} workflows: {figures[f'{name}_s'] * 1000:8.1f} ms, "
            f"{figures[f'{name}_requests']:5} requests, {figures[f'{name}_writes']:5} writes "
            f"({figures[f'{name}_result']})"
        )
    print(
        f"bare list of every Workflow: {figures['bare_list_s'] * 1000:.1f} ms, "
        f"{figures['bare_list_requests']} requests; forced no-op pass / bare list = "
        f"{figures['forced_noop_ratio']:.2f}x"
    )
