"""Cold sync, no-op poll and a one-file change of a generated N-manifest repository
(local backend).

Baselines in the same run: a bare ``yaml.CSafeLoader`` parse of the same bytes
(cold sync), ``git ls-remote`` on the same remote (no-op poll), and the fetch
alone (one-file change): ``git ls-remote`` plus the ``git fetch`` GitSource runs,
in a scratch mirror that was as up to date as the syncer's.

Usage: python -m bench.sync_scale [COUNT]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.generate import manifests
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.app.syncing import Syncer, SyncOptions

CHANGES = 5  # one-file changes timed; the median is reported


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def commit_all(work: Path, message: str) -> None:
    git(work, "add", "-A")
    git(work, "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-q", "-m", message)


def make_remote(root: Path, files: dict[str, bytes]) -> Path:
    """A bare repository ``root/remote.git`` holding files, pushed from ``root/work``."""
    work, bare = root / "work", root / "remote.git"
    for relpath, data in files.items():
        (work / relpath).parent.mkdir(parents=True, exist_ok=True)
        (work / relpath).write_bytes(data)
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "init", "-q", "-b", "main")
    commit_all(work, "generated")
    git(work, "push", "-q", str(bare), "HEAD:main")
    return bare


def timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def close_syncer(syncer: Syncer) -> None:
    """Stop the syncer's helpers (parse workers), where this version has any."""
    close = getattr(syncer, "close", None)
    if callable(close):
        close()


class FetchBaseline:
    """The network part of a sync alone: ``ls-remote``, then GitSource's ``fetch``,
    into a scratch bare mirror kept as up to date as the syncer's."""

    def __init__(self, root: Path, url: str) -> None:
        self.mirror = root / "scratch-mirror.git"
        self.url = url
        git(root, "init", "-q", "--bare", str(self.mirror))
        self.fetch()

    def fetch(self) -> None:
        git(self.mirror, "ls-remote", "--", self.url, "refs/heads/main")
        git(
            self.mirror,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--",
            self.url,
            "+refs/heads/main:refs/heads/main",
        )


def change_one_file(work: Path, bare: Path, relpath: str, round_: int) -> None:
    """Change one manifest's description, commit it and push it to the bare remote."""
    path = work / relpath
    text = path.read_text()
    start = text.index("description: ")
    end = text.index("\n", start)
    path.write_text(f'{text[:start]}description: "changed in round {round_}"{text[end:]}')
    commit_all(work, f"change {relpath}")
    git(work, "push", "-q", str(bare), "HEAD:main")


def one_file_changes(
    syncer: Syncer, store: LocalStore, *, root: Path, bare: Path, relpath: str
) -> dict[str, Any]:
    """Time ``CHANGES`` syncs of a one-file change against the fetch alone."""
    baseline = FetchBaseline(root, bare.as_uri())
    syncs: list[float] = []
    fetches: list[float] = []
    parses: list[int] = []
    writes: list[int] = []
    for round_ in range(CHANGES):
        change_one_file(root / "work", bare, relpath, round_)
        before_parses, before_writes = syncer.parses, store.writes
        started = time.perf_counter()
        outcome = syncer.sync()
        syncs.append(time.perf_counter() - started)
        if outcome.result != "succeeded" or outcome.plan is None:
            raise SystemExit(f"the one-file change did not sync: {outcome.message}")
        if outcome.plan.summary().get("update") != 1:
            raise SystemExit(f"expected one update, got {outcome.plan.summary()}")
        parses.append(syncer.parses - before_parses)
        writes.append(store.writes - before_writes)
        fetches.append(timed(baseline.fetch))
    beyond = [s - f for s, f in zip(syncs, fetches, strict=True)]
    return {
        "change_sync_s": statistics.median(syncs),
        "change_fetch_s": statistics.median(fetches),
        "change_beyond_fetch_s": statistics.median(beyond),
        "change_parses": max(parses),
        "change_writes": max(writes),
    }


def main(count: int = 10_000) -> dict[str, Any]:
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
        try:
            cold = timed(lambda: syncer.sync())
            applied = len(store.applied_workflows(owner="bench"))
            if applied != count:
                raise SystemExit(f"the cold sync applied {applied} workflows, not {count}")
            writes, parses = store.writes, syncer.parses
            noop = min(timed(lambda: syncer.sync()) for _ in range(5))
            ls_remote = min(
                timed(lambda: git(root, "ls-remote", bare.as_uri(), "refs/heads/main"))
                for _ in range(5)
            )
            noop_writes, noop_parses = store.writes - writes, syncer.parses - parses
            change = one_file_changes(syncer, store, root=root, bare=bare, relpath=min(files))
        finally:
            close_syncer(syncer)
            source.close()
            store.close()
    result: dict[str, Any] = {
        "manifests": count,
        "cold_sync_s": cold,
        "csafeloader_s": baseline,
        "cold_ratio": cold / baseline,
        "noop_poll_s": noop,
        "ls_remote_s": ls_remote,
        "noop_ratio": noop / ls_remote,
        "noop_writes": noop_writes,
        "noop_parses": noop_parses,
        **change,
    }
    print(
        f"cold sync of {count}: {cold:.2f} s vs CSafeLoader {baseline:.2f} s "
        f"-> {result['cold_ratio']:.2f}x\n"
        f"no-op poll: {noop * 1000:.1f} ms vs git ls-remote {ls_remote * 1000:.1f} ms "
        f"-> {result['noop_ratio']:.2f}x ({noop_writes} writes, {noop_parses} parses)\n"
        f"one file changed: sync {change['change_sync_s'] * 1000:.0f} ms, fetch alone "
        f"{change['change_fetch_s'] * 1000:.0f} ms -> "
        f"{change['change_beyond_fetch_s'] * 1000:.0f} ms beyond the fetch "
        f"({change['change_parses']} parsed, median of {CHANGES})"
    )
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
