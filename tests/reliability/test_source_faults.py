"""Source faults against a real daemon process: the remote down, slow, refusing the key,
force-pushed, its branch deleted, symlinks leading out of the repository, and a repository of
100,000 files.

For every fault: nothing is deleted in the backend, the daemon keeps running, the sync record
and ``sync.json`` on the status branch (a separate status repository, so that it can be
written while the source is away) say what is wrong, and the first pass after the fault is
gone recovers. ``pytest -s`` prints the figures; they are also written to
``bench/out/reliability-source*.json`` when that directory exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.gitfixtures import Remote
from tests.conftest import EXAMPLES_REPO
from tests.reliability.faults import (
    DaemonProcess,
    Figures,
    GitDaemon,
    SlowProxy,
    SyncRow,
    applied,
    branch_file,
    git,
    last_sync,
    peak_rss_kib,
    running_daemon,
    status_sync,
    utcnow,
    wait_until,
)
from tests.sshservers import SshServer

pytestmark = pytest.mark.timeout(300)

INTERVAL = 0.5
REPORT = "workflows/daily-report.yaml"
PIPELINE = "workflows/customer-batch-pipeline.yaml"


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    result: str  # of the pass that sees it: failed, or blocked
    says: str  # a piece of the message (or of an error, for manifest faults)


class World:
    """A remote (served by ``git daemon``), a separate status repository, a daemon."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = Remote(root / "srv")
        self.remote.copy_examples()
        self.status = root / "status.git"
        git(root, "init", "-q", "--bare", str(self.status))
        self.state = root / "state"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "RECONCILER_STATUS_REPO": self.status.as_uri(),
            "RECONCILER_GIT_TIMEOUT": "5",
            **extra,
        }

    def status_says(self, result: str, piece: str) -> bool:
        sync = status_sync(self.status)
        if sync is None or sync["result"] != result:
            return False
        text = sync["message"] + " " + " ".join(str(e.get("message")) for e in sync["errors"])
        return piece in text

    def record(self) -> SyncRow | None:
        return last_sync(self.state)


def through_fault(world: World, daemon: DaemonProcess, fault: Fault, figures: Figures) -> None:
    """Inject, check that it is seen and reported and that nothing is deleted, heal, and
    check that the daemon recovers in the pass after."""
    before = applied(world.state)
    assert before, "nothing applied before the fault"
    injected_at = utcnow()
    fault.inject()

    def seen() -> bool:
        record = world.record()
        return (
            record is not None
            and record.finished_at > injected_at
            and record.result == fault.result
        )

    detect = wait_until(seen, seconds=30, what=f"{fault.name}: a {fault.result} sync record")
    record = world.record()
    assert record is not None
    said = record.message + " " + " ".join(str(e.get("message")) for e in record.errors)
    assert fault.says in said, f"{fault.name}: {said!r}"
    wait_until(
        lambda: world.status_says(fault.result, fault.says),
        seconds=30,
        what=f"{fault.name}: sync.json on the status branch",
    )
    readme = branch_file(world.status, "README.md") or ""
    assert f"Last sync: **{fault.result}**" in readme
    assert "[sync.json](sync.json)" in readme  # where the reason is
    time.sleep(3 * INTERVAL)  # a few more passes under the fault
    assert daemon.alive, daemon.log_text()[-3000:]
    during = applied(world.state)
    assert set(before) <= set(during), f"{fault.name}: deleted {set(before) - set(during)}"
    changed = {key for key in before if during[key] != before[key]}
    assert not changed, f"{fault.name}: changed {changed}"  # kept exactly as applied
    passes_before = daemon.passes()
    healed_at = utcnow()
    fault.heal()

    def recovered() -> bool:
        record = world.record()
        return (
            record is not None and record.finished_at > healed_at and record.result == "succeeded"
        )

    recovery = wait_until(recovered, seconds=30, what=f"{fault.name}: recovery")
    passes = daemon.passes() - passes_before
    # the pass in flight when it healed may still have failed; the one after must succeed
    # (one more may have ended between the two reads)
    assert passes <= 3, f"{fault.name}: {passes} passes to recover"
    wait_until(
        lambda: (s := status_sync(world.status)) is not None and s["result"] == "succeeded",
        seconds=30,
        what=f"{fault.name}: sync.json recovered",
    )
    assert set(before) <= set(applied(world.state))
    figures.add(
        fault.name,
        {
            "error": record.message if fault.says in record.message else said.strip(),
            "detected_s": round(detect, 2),
            "recovered_s": round(recovery, 2),
            "passes_to_recover": passes,
        },
    )


def symlink_fault(remote: Remote, target: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Turn the report's manifest into a symlink to ``target`` and, in the same commit, drop
    another manifest: with a file unreadable, that drop must not delete anything."""
    original = remote.read(REPORT)
    pipeline = remote.read(PIPELINE)

    def inject() -> None:
        link = remote.work / REPORT
        link.unlink()
        os.symlink(target, link)
        remote.remove(PIPELINE)
        remote.commit(f"the report is a symlink to {target}")

    def heal() -> None:
        (remote.work / REPORT).unlink()
        remote.write(REPORT, original)
        remote.write(PIPELINE, pipeline)
        remote.commit("restore the report")

    return inject, heal


def test_git_remote_faults_one_after_another(tmp_path: Path) -> None:
    world = World(tmp_path)
    remote = world.remote
    server = GitDaemon(tmp_path / "srv")
    server.start()
    gone = tmp_path / "srv" / "moved.git"
    other = tmp_path / "other"
    figures = Figures("source")

    def delete_branch() -> None:
        git(remote.bare, "update-ref", "-d", "refs/heads/main")

    def restore_branch() -> None:
        git(remote.work, "push", "-q", "--force", "origin", "HEAD:main")

    def unrelated_history() -> None:
        git(other, "push", "-q", "--force", str(remote.bare), "HEAD:main")

    def back_to_our_history() -> None:
        remote.rewrite_history("our manifests again")

    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "README.md").write_text("another project\n")
    (other / "hello.yaml").write_text(
        (remote.work / REPORT).read_text().replace("name: daily-report", "name: hello")
    )
    git(other, "add", "-A")
    git(other, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "other project")

    faults = [
        Fault(
            "remote-down-daemon-stopped",
            server.stop,
            server.start,
            "failed",
            "could not be reached",
        ),
        Fault(
            "remote-path-gone",
            lambda: remote.bare.rename(gone),
            lambda: gone.rename(remote.bare),
            "failed",
            "there is no git repository at",
        ),
        Fault(
            "branch-deleted",
            delete_branch,
            restore_branch,
            "failed",
            "branch 'main' does not exist",
        ),
        Fault(
            "force-push-unrelated-history",
            unrelated_history,
            back_to_our_history,
            "blocked",
            "delet",
        ),
        Fault(
            "manifest-symlink-to-etc-passwd",
            *symlink_fault(remote, "/etc/passwd"),
            "failed",
            "symlink to '/etc/passwd' leads outside the repository",
        ),
        Fault(
            "manifest-symlink-out-of-repo",
            *symlink_fault(remote, "../../../etc/passwd"),
            "failed",
            "leads outside the repository",
        ),
    ]
    try:
        with running_daemon(
            server.url(remote.bare), world.state, interval=INTERVAL, env=world.env()
        ) as daemon:
            wait_until(lambda: len(applied(world.state)) == 4, what="the examples applied")
            for fault in faults:
                through_fault(world, daemon, fault, figures)
            # a force-push of the same files (a rewritten history) is no fault at all
            revision = remote.rewrite_history("squashed")
            wait_until(
                lambda: (r := world.record()) is not None and r.revision == revision,
                what="the rewritten history read",
            )
            record = world.record()
            assert record is not None
            assert record.result == "succeeded", record
            assert not record.summary.get("delete"), record.summary
            assert len(applied(world.state)) == 4
            assert daemon.alive
            code = daemon.stop()
            assert code == 0, daemon.log_text()[-3000:]
    finally:
        server.stop()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()[-5000:]
    figures.save()


def test_a_slow_remote_is_bounded_by_git_timeout(tmp_path: Path) -> None:
    world = World(tmp_path)
    server = GitDaemon(tmp_path / "srv")
    server.start()
    proxy = SlowProxy(server.port)
    url = f"git://127.0.0.1:{proxy.port}/remote.git"
    figures = Figures("source-slow")

    def slow() -> None:
        proxy.delay = 4.0  # per chunk: far beyond git_timeout

    def fast() -> None:
        proxy.delay = 0.0

    try:
        with running_daemon(
            url, world.state, interval=INTERVAL, env=world.env(RECONCILER_GIT_TIMEOUT="1.5")
        ) as daemon:
            wait_until(lambda: len(applied(world.state)) == 4, what="the examples applied")
            started = time.monotonic()
            through_fault(
                world,
                daemon,
                Fault("remote-slow", slow, fast, "failed", "did not finish within 1.5 seconds"),
                figures,
            )
            figures.add("slow_phase_seconds", round(time.monotonic() - started, 2))
            assert daemon.stop() == 0
    finally:
        proxy.close()
        server.stop()
    figures.save()


def test_a_refused_ssh_key(tmp_path: Path, sshd: SshServer) -> None:
    world = World(tmp_path)
    key = tmp_path / "deploy_key"
    shutil.copy(sshd.client_key, key)
    key.chmod(0o600)
    figures = Figures("source-ssh")

    def refused() -> None:  # the operator rotated to a key the server does not accept
        shutil.copy(sshd.other_key, key)

    def accepted() -> None:
        shutil.copy(sshd.client_key, key)

    with running_daemon(
        sshd.url(world.remote.bare),
        world.state,
        interval=INTERVAL,
        env=world.env(
            RECONCILER_SSH_KEY_FILE=str(key), RECONCILER_KNOWN_HOSTS_FILE=str(sshd.known_hosts)
        ),
    ) as daemon:
        wait_until(lambda: len(applied(world.state)) == 4, what="the examples applied")
        through_fault(
            world,
            daemon,
            Fault("ssh-key-refused", refused, accepted, "failed", "SSH authentication"),
            figures,
        )
        assert daemon.stop() == 0
    figures.save()


# -- 100,000 files ------------------------------------------------------------------------

FILES = 100_000
MANIFESTS = 200


def big_repository(bare: Path, template: str) -> str:
    """One commit of FILES files, MANIFESTS of them manifests, built by ``git fast-import``."""
    git(bare.parent, "init", "-q", "--bare", "-b", "main", str(bare))
    lines: list[bytes] = []
    blobs: dict[bytes, int] = {}

    def blob(data: bytes) -> int:
        if data not in blobs:
            mark = len(blobs) + 1
            blobs[data] = mark
            lines.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return blobs[data]

    entries: list[tuple[int, str]] = []
    for i in range(MANIFESTS):
        text = template.replace("name: daily-report", f"name: report-{i:04d}")
        entries.append((blob(text.encode()), f"workflows/team-{i % 20:02d}/report-{i:04d}.yaml"))
    for i in range(FILES - MANIFESTS):
        data = f"row {i}\n".encode()
        suffix = (".csv", ".md", ".py", ".json", ".txt")[i % 5]
        entries.append((blob(data), f"data/{i % 100:02d}/{i // 100 % 100:02d}/f{i:06d}{suffix}"))
    stamp = int(time.time())
    lines.append(
        b"commit refs/heads/main\ncommitter Big <big@example.com> %d +0000\n"
        b"data 16\n100k files, hey\n" % stamp
    )
    lines.extend(b"M 100644 :%d %s\n" % (mark, path.encode()) for mark, path in entries)
    lines.append(b"done\n")
    subprocess.run(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=bare,
        input=b"".join(lines),
        check=True,
        timeout=300,
    )
    return git(bare, "rev-parse", "main")


def change_one_file(bare: Path, path: str, text: str) -> str:
    data = text.encode()
    stream = (
        b"commit refs/heads/main\ncommitter Big <big@example.com> %d +0000\ndata 11\none change\n"
        b"from refs/heads/main^0\nM 100644 inline %s\ndata %d\n%s\ndone\n"
        % (int(time.time()), path.encode(), len(data), data)
    )
    subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=bare, input=stream, check=True)
    return git(bare, "rev-parse", "main")


def test_a_repository_of_100k_files(tmp_path: Path) -> None:
    figures = Figures("source-100k")
    bare = tmp_path / "big.git"
    started = time.monotonic()
    revision = big_repository(bare, (EXAMPLES_REPO / REPORT).read_text())
    figures.add("build_seconds", round(time.monotonic() - started, 2))
    state = tmp_path / "state"
    with running_daemon(
        bare.as_uri(),
        state,
        interval=INTERVAL,
        env={"RECONCILER_STATUS_ENABLED": "false", "RECONCILER_GIT_TIMEOUT": "120"},
    ) as daemon:
        started = time.monotonic()
        wait_until(
            lambda: (r := last_sync(state)) is not None and r.revision == revision,
            seconds=240,
            what="the first pass over 100k files",
            step=0.1,
        )
        first = time.monotonic() - started
        record = last_sync(state)
        assert record is not None
        assert record.result == "succeeded", (record.message, record.errors[:3])
        assert len(applied(state)) == MANIFESTS
        figures.add("first_pass_seconds", round(first, 2))
        # the next passes: one ls-remote each, nothing read again
        time.sleep(4 * INTERVAL)
        passes = daemon.passes()
        time.sleep(6 * INTERVAL)
        figures.add("idle_passes_in_3s", daemon.passes() - passes)
        # one manifest changed: only the trees on its path and its blob are read again
        text = (EXAMPLES_REPO / REPORT).read_text().replace("cpu: 500m", "cpu: 2")
        text = text.replace("name: daily-report", "name: report-0000")
        changed = change_one_file(bare, "workflows/team-00/report-0000.yaml", text)
        started = time.monotonic()
        wait_until(
            lambda: (r := last_sync(state)) is not None and r.revision == changed,
            seconds=60,
            what="the one-file change",
            step=0.02,
        )
        record = last_sync(state)
        assert record is not None
        assert record.result == "succeeded"
        assert record.summary.get("update") == 1, record.summary
        figures.add("one_file_change_seconds", round(time.monotonic() - started, 2))
        rss = peak_rss_kib(daemon.process.pid)
        figures.add("daemon_peak_rss_mib", round(rss / 1024, 1))
        assert daemon.alive
        assert daemon.stop() == 0
    assert daemon.max_rss_kib is not None
    figures.add("peak_rss_with_git_children_mib", round(daemon.max_rss_kib / 1024, 1))
    mirror = next((state / "git").glob("*.git"))
    figures.add(
        "mirror_mib",
        round(sum(p.stat().st_size for p in mirror.rglob("*") if p.is_file()) / 2**20, 1),
    )
    assert rss < 1024 * 1024, f"peak RSS {rss} KiB"
    figures.save()
