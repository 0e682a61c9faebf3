"""Resident memory of a daemon-like process holding N applied workflows.

A fresh interpreter (a subprocess, so nothing of the benchmark's own workload
is counted) does what the daemon does at start against a generated N-manifest
remote: a Syncer and its first pass (the cold sync), a Scheduler loaded with
every workflow, one no-op pass and one scheduler tick. Then it reports its
resident set (``VmRSS``), the peak (``VmHWM``) and the resident set of any
helper processes it left running (parse workers). A second fresh process
opens the same state directory, as a restarted daemon would (nothing to parse).

Usage: python -m bench.memory [COUNT]
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.generate import manifests
from bench.sync_scale import close_syncer, make_remote

PROJECT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int | str = "self", *, field: str = "VmRSS") -> float:
    """The resident set of a process, from ``/proc/<pid>/status`` (0 when it is gone).

    ``VmHWM`` is the peak. (Not ``ru_maxrss``: Linux carries that over from the
    forking parent's image across exec, so a child of a big process reports its parent's.)
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int | str = "self") -> list[int]:
    """Every process below ``pid``, from ``/proc/<pid>/task/*/children``."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for child in pids:
            found += [child, *descendants(child)]
    return found


def command_of(pid: int) -> str:
    """The first words of a process's command line, to say what a helper is."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(Path(a.decode()).name if i == 0 else a.decode() for i, a in enumerate(argv[:3]))


def daemon_like(url: str, state_dir: Path) -> dict[str, Any]:
    """Start like the daemon does, then measure this process."""
    started = rss_mb()
    from reconciler.adapters.clocks import SystemClock
    from reconciler.adapters.gitsource import GitSource
    from reconciler.adapters.local.store import LocalStore
    from reconciler.app.scheduling import Scheduler
    from reconciler.app.syncing import Syncer, SyncOptions

    clock = SystemClock()
    source = GitSource(url, cache_dir=state_dir / "git")
    store = LocalStore(state_dir, clock=clock)
    options = SyncOptions(owner="bench")
    syncer = Syncer(source, store, clock=clock, options=options, sleep=time.sleep)
    scheduler = Scheduler(store, clock=clock)
    first = syncer.sync()
    gc.collect()
    after_sync = rss_mb()
    scheduler.refresh()
    scheduler.tick()
    gc.collect()
    after_scheduler = rss_mb()
    second = syncer.sync()
    scheduler.tick()
    gc.collect()
    helpers = descendants()
    result = {
        "first_pass": first.result,
        "second_pass": second.result,
        "parses": syncer.parses,
        "started_rss_mb": started,
        "after_sync_rss_mb": after_sync,
        "after_scheduler_rss_mb": after_scheduler,
        "rss_mb": rss_mb(),
        "peak_rss_mb": rss_mb(field="VmHWM"),
        "helpers": len(helpers),
        "helper_commands": sorted(command_of(pid) for pid in helpers),
        "helpers_rss_mb": sum(rss_mb(pid) for pid in helpers),
    }
    result["applied"] = len(store.applied_workflows(owner="bench"))  # after measuring
    close_syncer(syncer)
    source.close()
    store.close()
    return result


def measure_child(url: str, state_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", url, str(state_dir)],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(count: int = 10_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = make_remote(root, manifests(count))
        first = measure_child(bare.as_uri(), root / "state")
        restart = measure_child(bare.as_uri(), root / "state")
    if first["applied"] != count or restart["parses"] != 0:
        raise SystemExit(f"the daemon-like process did not hold {count} workflows: {first}")
    total = first["rss_mb"] + first["helpers_rss_mb"]
    result = {
        "workflows": count,
        "rss_mb": total,
        "daemon_rss_mb": first["rss_mb"],
        "helpers_rss_mb": first["helpers_rss_mb"],
        "helpers": first["helpers"],
        "helper_commands": first["helper_commands"],
        "peak_rss_mb": first["peak_rss_mb"],
        "base_rss_mb": first["started_rss_mb"],
        "after_sync_rss_mb": first["after_sync_rss_mb"],
        "after_scheduler_rss_mb": first["after_scheduler_rss_mb"],
        "restart_rss_mb": restart["rss_mb"] + restart["helpers_rss_mb"],
        "restart_peak_rss_mb": restart["peak_rss_mb"],
    }
    print(
        f"daemon with {count} applied workflows: {total:.0f} MB resident after its cold sync "
        f"({first['rss_mb']:.0f} MB + {first['helpers']} helpers {first['helpers_rss_mb']:.0f} "
        f"MB; peak {first['peak_rss_mb']:.0f} MB; before the first pass "
        f"{first['started_rss_mb']:.0f} MB, after it {first['after_sync_rss_mb']:.0f} MB, "
        f"with the scheduler loaded {first['after_scheduler_rss_mb']:.0f} MB); after a restart "
        f"{result['restart_rss_mb']:.0f} MB (peak {restart['peak_rss_mb']:.0f} MB)"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(daemon_like(sys.argv[2], Path(sys.argv[3]))))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
