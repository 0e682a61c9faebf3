"""Cold sync and no-op poll of a generated N-manifest repository (local backend).

Baselines in the same run: a bare ``yaml.CSafeLoader`` parse of the same bytes
(cold sync) and ``git ls-remote`` on the same remote (no-op poll).

Usage: python -m bench.sync_scale [COUNT]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.generate import manifests
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.app.syncing import Syncer, SyncOptions


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_remote(root: Path, files: dict[str, bytes]) -> Path:
    work, bare = root / "work", root / "remote.git"
    for relpath, data in files.items():
        (work / relpath).parent.mkdir(parents=True, exist_ok=True)
        (work / relpath).write_bytes(data)
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-q", "-m", "generated")
    git(work, "push", "-q", str(bare), "HEAD:main")
    return bare


def timed(func: object) -> float:
    started = time.perf_counter()
    func()  # type: ignore[operator]
    return time.perf_counter() - started


def main(count: int = 10_000) -> dict[str, float]:
    files = manifests(count)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = make_remote(root, files)
        baseline = timed(lambda: [yaml.load(d, Loader=yaml.CSafeLoader) for d in files.values()])
        source = GitSource(bare.as_uri(), cache_dir=root / "cache")
        store = LocalStore(root / "state", clock=SystemClock())
        syncer = Syncer(
            source, store, clock=SystemClock(), options=SyncOptions(owner="bench"), sleep=time.sleep
        )
        cold = timed(lambda: syncer.sync())
        assert len(store.applied_workflows(owner="bench")) == count
        writes, parses = store.writes, syncer.parses
        noop = min(timed(lambda: syncer.sync()) for _ in range(5))
        ls_remote = min(
            timed(lambda: git(root, "ls-remote", bare.as_uri(), "refs/heads/main"))
            for _ in range(5)
        )
        noop_writes, noop_parses = store.writes - writes, syncer.parses - parses
    result = {
        "manifests": count,
        "cold_sync_s": cold,
        "csafeloader_s": baseline,
        "cold_ratio": cold / baseline,
        "noop_poll_s": noop,
        "ls_remote_s": ls_remote,
        "noop_ratio": noop / ls_remote,
        "noop_writes": noop_writes,
        "noop_parses": noop_parses,
    }
    print(
        f"cold sync of {count}: {cold:.2f} s vs CSafeLoader {baseline:.2f} s "
        f"-> {result['cold_ratio']:.2f}x\n"
        f"no-op poll: {noop * 1000:.1f} ms vs git ls-remote {ls_remote * 1000:.1f} ms "
        f"-> {result['noop_ratio']:.2f}x ({noop_writes} writes, {noop_parses} parses)"
    )
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
