"""The status writer against real bare repositories: orphan branch, batches, races, retention."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters import statusbranch
from reconciler.adapters.gitsource import GitCredentials, GitSource
from reconciler.adapters.statusbranch import (
    StatusAuthError,
    StatusConfigError,
    StatusConflictError,
    StatusRejectedError,
    StatusUnreachableError,
    StatusWriter,
)
from reconciler.ports import TerminalError, TransientError
from tests.app.gitfixtures import Remote, git
from tests.sshservers import SshServer

AUTHOR_NAME, AUTHOR_EMAIL = "Status Bot", "status-bot@example.test"


def run_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def branch_files(bare: Path, branch: str = "status") -> dict[str, bytes]:
    """Every file on a branch of the remote, read with plain git (independently of the writer)."""
    names = [n for n in git(bare, "ls-tree", "-r", "-z", "--name-only", branch).split("\0") if n]
    return {
        name: subprocess.run(
            ["git", "cat-file", "blob", f"{branch}:{name}"],
            cwd=bare,
            capture_output=True,
            check=True,
        ).stdout
        for name in names
    }


def depth(bare: Path, branch: str = "status") -> int:
    return int(git(bare, "rev-list", "--first-parent", "--count", branch))


class Rival:
    """Another writer: a plain git clone that commits one file to ``status`` and pushes."""

    def __init__(self, bare: Path, work: Path) -> None:
        self.bare = bare
        self.work = work
        git(work.parent, "init", "-q", "-b", "status", str(work))
        git(work, "config", "user.name", "Rival")
        git(work, "config", "user.email", "rival@example.test")
        git(work, "config", "commit.gpgsign", "false")
        git(work, "remote", "add", "origin", str(bare))

    def try_push(self, path: str, content: bytes) -> bool:
        fetched = run_git(self.work, "fetch", "-q", "origin", "+status:refs/remotes/origin/status")
        if fetched.returncode == 0:
            git(self.work, "reset", "-q", "--hard", "origin/status")
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", f"rival writes {path}")
        return run_git(self.work, "push", "-q", "origin", "HEAD:refs/heads/status").returncode == 0

    def push(self, path: str, content: bytes, *, attempts: int = 200) -> None:
        for _ in range(attempts):
            if self.try_push(path, content):
                return
            time.sleep(random.uniform(0.0, 0.02))
        raise AssertionError(f"the rival could not push {path} in {attempts} attempts")


class RacedWriter(StatusWriter):
    """A writer whose every fetch is followed by ``after_fetch(fetch number)``: a race window."""

    def __init__(self, url: str, *, after_fetch: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.after_fetch = after_fetch
        self.fetches = 0

    def _fetch_tip(self) -> str | None:
        tip = super()._fetch_tip()
        self.fetches += 1
        self.after_fetch(self.fetches)
        return tip


class Sleeps(list[float]):
    """An injected sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """A remote whose ``main`` holds a manifest (the source branch)."""
    upstream = Remote(tmp_path / "upstream")
    upstream.write("workflows/etl.yaml", "version: v2alpha\n")
    upstream.commit("manifests")
    return upstream


@pytest.fixture
def rival(tmp_path: Path, remote: Remote) -> Rival:
    return Rival(remote.bare, tmp_path / "rival")


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


OpenWriter = Callable[..., StatusWriter]


@pytest.fixture
def open_writer(tmp_path: Path, remote: Remote, sleeps: Sleeps) -> Iterator[OpenWriter]:
    """StatusWriter(url, **kwargs): the remote, a per-test cache, recorded sleeps, fixed rng."""
    writers: list[StatusWriter] = []

    def open_(
        url: str | None = None, *, cls: type[StatusWriter] = StatusWriter, **kwargs: Any
    ) -> StatusWriter:
        kwargs.setdefault("source_branch", "main")
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        kwargs.setdefault("author_name", AUTHOR_NAME)
        kwargs.setdefault("author_email", AUTHOR_EMAIL)
        kwargs.setdefault("sleep", sleeps)
        kwargs.setdefault("rng", random.Random(7))
        writer = cls(url if url is not None else remote.url, **kwargs)
        writers.append(writer)
        return writer

    yield open_
    for writer in writers:
        writer.close()


# -- the orphan branch -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url_form",
    [pytest.param("file-uri", id="file-uri"), pytest.param("path", id="local-path")],
)
def test_first_push_creates_an_orphan_branch_and_leaves_main_alone(
    remote: Remote, open_writer: OpenWriter, tmp_path: Path, url_form: str
) -> None:
    main_before = git(remote.bare, "rev-parse", "refs/heads/main")
    url = remote.url if url_form == "file-uri" else str(remote.bare)
    cache = tmp_path / "cache"
    source_mirror = GitSource(url, branch="main", cache_dir=cache).mirror_dir
    writer = open_writer(url)

    commit = writer.push({"runs/etl/0001.json": b'{"state": "succeeded"}\n'}, message="Run 0001")

    assert git(remote.bare, "rev-parse", "refs/heads/status") == commit
    assert git(remote.bare, "rev-parse", "refs/heads/main") == main_before
    assert run_git(remote.bare, "merge-base", "main", "status").returncode == 1
    assert git(remote.bare, "rev-list", "--parents", "-n", "1", "status") == commit  # no parent
    assert branch_files(remote.bare) == {"runs/etl/0001.json": b'{"state": "succeeded"}\n'}
    assert git(remote.bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", "status") == (
        f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>|{AUTHOR_NAME} <{AUTHOR_EMAIL}>|Run 0001"
    )
    assert not source_mirror.exists()
    assert [p.name for p in cache.iterdir()] == [writer.repo_dir.name]
    assert writer.repo_dir.name.startswith("status-")
    assert git(writer.repo_dir, "rev-parse", "--is-bare-repository") == "true"
    assert (writer.push_count, writer.retry_count) == (1, 0)


def test_no_branch_yet_reads_nothing_and_an_empty_batch_commits_nothing(
    remote: Remote, open_writer: OpenWriter
) -> None:
    writer = open_writer()

    assert writer.read("runs/a.json") is None
    assert writer.list_files() == {}
    assert writer.push({}, message="nothing") == ""
    assert writer.push({"runs/a.json": None}, message="delete nothing") == ""
    assert run_git(remote.bare, "rev-parse", "--verify", "refs/heads/status").returncode != 0
    assert writer.push_count == 0


# -- files: nested, updated, deleted ---------------------------------------------------------

NESTED = {"runs/etl/2024/0001.json": b"one\n", "runs/etl/2024/0002.json": b"two\n", "top": b"t\n"}


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        pytest.param([NESTED], NESTED, id="nested"),
        pytest.param(
            [NESTED, {"top": b"t2\n", "runs/etl/2024/0001.json": b"one again\n"}],
            {**NESTED, "top": b"t2\n", "runs/etl/2024/0001.json": b"one again\n"},
            id="update",
        ),
        pytest.param(
            [NESTED, {"runs/etl/2024/0001.json": None, "runs/etl/2024/0002.json": None}],
            {"top": b"t\n"},
            id="delete-empties-directories",
        ),
        pytest.param(
            [NESTED, {"runs/etl/2024/0002.json": None, "new/file": b"n\n"}],
            {"runs/etl/2024/0001.json": b"one\n", "top": b"t\n", "new/file": b"n\n"},
            id="write-and-delete-in-one-batch",
        ),
        pytest.param(
            [NESTED, {"runs/etl": b"now a file\n"}],
            {"runs/etl": b"now a file\n", "top": b"t\n"},
            id="file-replaces-directory",
        ),
        pytest.param(
            [NESTED, {"top/inner": b"i\n"}],
            {"runs/etl/2024/0001.json": b"one\n", "runs/etl/2024/0002.json": b"two\n"}
            | {"top/inner": b"i\n"},
            id="directory-replaces-file",
        ),
        pytest.param(
            [{"empty": b"", "binary": bytes(range(256)), "name with spaces é": b"x\n"}],
            {"empty": b"", "binary": bytes(range(256)), "name with spaces é": b"x\n"},
            id="empty-binary-unicode",
        ),
    ],
)
def test_writes_land_on_the_branch_and_read_back(
    remote: Remote,
    open_writer: OpenWriter,
    batches: list[dict[str, bytes | None]],
    expected: dict[str, bytes],
) -> None:
    writer = open_writer()
    commits = [writer.push(batch, message=f"batch {n}") for n, batch in enumerate(batches)]

    assert branch_files(remote.bare) == expected
    assert depth(remote.bare) == len(batches)
    assert git(remote.bare, "rev-parse", "status") == commits[-1]
    assert {path: writer.read(path) for path in expected} == expected
    listing = writer.list_files()
    assert set(listing) == set(expected)
    assert all(listing[p] == git(remote.bare, "rev-parse", f"status:{p}") for p in expected)
    assert writer.list_files("runs/etl/") == {
        p: b for p, b in listing.items() if p.startswith("runs/etl/")
    }
    assert writer.read("no/such/file") is None
    assert writer.push_count == len(batches)


@pytest.mark.parametrize(
    ("writes", "prune"),
    [
        pytest.param({}, None, id="empty-writes"),
        pytest.param({"a.json": b"1\n"}, None, id="same-content"),
        pytest.param({"absent.json": None}, None, id="delete-absent"),
        pytest.param({}, lambda files: [], id="prune-nothing"),
        pytest.param({}, lambda files: ["absent.json"], id="prune-absent"),
    ],
)
def test_a_batch_that_changes_nothing_makes_no_commit(
    remote: Remote,
    open_writer: OpenWriter,
    writes: dict[str, bytes | None],
    prune: Callable[[Mapping[str, str]], list[str]] | None,
) -> None:
    writer = open_writer()
    tip = writer.push({"a.json": b"1\n"}, message="first")

    assert writer.push(writes, message="no-op", prune=prune) == tip
    assert git(remote.bare, "rev-parse", "status") == tip
    assert writer.push_count == 1


@pytest.mark.parametrize(
    "writes",
    [
        pytest.param({"": b"x"}, id="empty"),
        pytest.param({"/abs": b"x"}, id="absolute"),
        pytest.param({"a//b": b"x"}, id="double-slash"),
        pytest.param({"a/": b"x"}, id="trailing-slash"),
        pytest.param({"../escape": b"x"}, id="dot-dot"),
        pytest.param({"a/./b": b"x"}, id="dot"),
        pytest.param({".git/config": b"x"}, id="dot-git"),
        pytest.param({"a/.GIT/b": b"x"}, id="dot-git-any-case"),
        pytest.param({"new\nline": b"x"}, id="control-character"),
        pytest.param({"a": b"x", "a/b": b"y"}, id="file-and-directory"),
    ],
)
def test_bad_paths_are_refused_before_anything_is_written(
    remote: Remote, open_writer: OpenWriter, writes: dict[str, bytes | None]
) -> None:
    writer = open_writer()
    with pytest.raises(ValueError, match="status"):
        writer.push(writes, message="bad")
    assert run_git(remote.bare, "rev-parse", "--verify", "refs/heads/status").returncode != 0


def test_a_thousand_files_are_one_commit_made_by_a_few_processes(
    remote: Remote, open_writer: OpenWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = open_writer()
    writer.push({"README": b"status\n"}, message="start")
    writes: dict[str, bytes | None] = {
        f"runs/wf-{n % 10}/{n:04d}.json": f'{{"run": {n}}}\n'.encode() for n in range(1000)
    }
    processes: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        processes.append(list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(statusbranch.subprocess, "Popen", counting_popen)
    started = time.perf_counter()
    commit = writer.push(writes, message="1,000 runs")
    elapsed = time.perf_counter() - started
    monkeypatch.undo()
    print(f"\n1,000-file batch: commit + push in {elapsed:.3f} s ({len(processes)} git processes)")

    assert depth(remote.bare) == 2
    assert git(remote.bare, "rev-parse", "status") == commit
    assert len(processes) <= 12, [p[2] for p in processes]
    files = writer.list_files("runs/")
    assert len(files) == 1000
    assert writer.read("runs/wf-7/0997.json") == b'{"run": 997}\n'


# -- races -----------------------------------------------------------------------------------


def test_a_rival_push_between_fetch_and_push_is_retried_and_both_files_stay(
    remote: Remote, open_writer: OpenWriter, rival: Rival, sleeps: Sleeps
) -> None:
    rival.push("runs/theirs/0000.json", b"theirs 0\n")

    def race_once(fetch: int) -> None:
        if fetch == 1:
            rival.push("runs/theirs/0001.json", b"theirs 1\n")

    writer = open_writer(cls=RacedWriter, after_fetch=race_once)
    writer.push({"runs/ours/0001.json": b"ours\n"}, message="ours")

    assert branch_files(remote.bare) == {
        "runs/theirs/0000.json": b"theirs 0\n",
        "runs/theirs/0001.json": b"theirs 1\n",
        "runs/ours/0001.json": b"ours\n",
    }
    assert (writer.push_count, writer.retry_count) == (1, 1)
    assert len(sleeps) == 1
    assert 0.1 <= sleeps[0] <= 0.3  # base 0.2 s, ±50% jitter
    assert depth(remote.bare) == 3  # rival, rival, ours: nothing forced away


@pytest.mark.parametrize("max_attempts", [pytest.param(4, id="4"), pytest.param(8, id="8-capped")])
def test_losing_every_race_raises_a_transient_error_after_max_attempts(
    remote: Remote, open_writer: OpenWriter, rival: Rival, sleeps: Sleeps, max_attempts: int
) -> None:
    def race_always(fetch: int) -> None:
        rival.push(f"runs/theirs/{fetch:04d}.json", b"theirs\n")

    writer = open_writer(cls=RacedWriter, after_fetch=race_always, max_attempts=max_attempts)

    with pytest.raises(StatusConflictError, match="kept and will be retried") as caught:
        writer.push({"runs/ours.json": b"ours\n"}, message="ours")

    assert isinstance(caught.value, TransientError)
    assert writer.fetches == max_attempts
    assert (writer.push_count, writer.retry_count) == (0, max_attempts - 1)
    assert len(sleeps) == max_attempts - 1
    for attempt, delay in enumerate(sleeps):
        nominal = min(5.0, 0.2 * 2**attempt)  # base 0.2 s, doubled, capped at 5 s
        assert nominal * 0.5 <= delay <= min(5.0, nominal * 1.5)  # ±50% jitter, still capped
    assert "runs/ours.json" not in branch_files(remote.bare)


def test_two_writers_racing_lose_nothing(
    remote: Remote, open_writer: OpenWriter, rival: Rival
) -> None:
    writer = open_writer(sleep=lambda seconds: time.sleep(seconds / 10), max_attempts=30)
    failures: list[BaseException] = []

    def rival_writes() -> None:
        try:
            for n in range(20):
                rival.push(f"runs/theirs/{n:04d}.json", f"theirs {n}\n".encode())
        except BaseException as exc:  # handed to the main thread, which fails the test
            failures.append(exc)

    thread = threading.Thread(target=rival_writes)
    started = time.perf_counter()
    thread.start()
    for n in range(20):
        writer.push({f"runs/ours/{n:04d}.json": f"ours {n}\n".encode()}, message=f"ours {n}")
    thread.join(timeout=60)
    elapsed = time.perf_counter() - started
    print(f"\n2 x 20 racing commits in {elapsed:.2f} s, {writer.retry_count} of ours retried")

    assert not thread.is_alive()
    assert failures == []
    files = branch_files(remote.bare)
    expected = {f"runs/ours/{n:04d}.json": f"ours {n}\n".encode() for n in range(20)} | {
        f"runs/theirs/{n:04d}.json": f"theirs {n}\n".encode() for n in range(20)
    }
    assert files == expected
    assert writer.push_count == 20
    assert run_git(remote.bare, "merge-base", "main", "status").returncode == 1


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("before-fetch", id="before-fetch"),
        pytest.param("after-fetch", id="after-fetch"),
    ],
)
def test_a_vanished_remote_is_transient_and_a_new_writer_pushes_the_batch_later(
    remote: Remote, open_writer: OpenWriter, tmp_path: Path, sleeps: Sleeps, when: str
) -> None:
    open_writer().push({"runs/first.json": b"1\n"}, message="first")
    moved = tmp_path / "moved.git"
    batch: dict[str, bytes | None] = {"runs/second.json": b"2\n", "runs/first.json": None}

    def move_away(fetch: int) -> None:
        if when == "after-fetch" and fetch == 1:
            remote.bare.rename(moved)

    if when == "before-fetch":
        remote.bare.rename(moved)
    writer = open_writer(cls=RacedWriter, after_fetch=move_away)
    with pytest.raises(StatusUnreachableError, match="no git repository at") as caught:
        writer.push(batch, message="second")
    assert isinstance(caught.value, TransientError)
    assert (writer.push_count, writer.retry_count, len(sleeps)) == (0, 0, 0)

    moved.rename(remote.bare)
    again = open_writer()
    commit = again.push(batch, message="second")

    assert branch_files(remote.bare) == {"runs/second.json": b"2\n"}
    assert git(remote.bare, "rev-parse", "status") == commit
    assert (again.push_count, again.retry_count) == (1, 0)


def test_a_remote_hook_refusing_the_push_is_terminal(
    remote: Remote, open_writer: OpenWriter
) -> None:
    hook = remote.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'status writes are frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    writer = open_writer()

    with pytest.raises(StatusRejectedError, match="pre-receive hook declined") as caught:
        writer.push({"runs/a.json": b"a\n"}, message="refused")

    assert isinstance(caught.value, TerminalError)
    assert "status writes are frozen today" in str(caught.value)
    assert writer.retry_count == 0


@pytest.mark.parametrize(
    ("user_info", "credentials"),
    [
        pytest.param("x-access-token:s3cr3t-t0ken@", GitCredentials(), id="token-in-url"),
        pytest.param("", GitCredentials(token="s3cr3t-t0ken"), id="token-in-credentials"),
    ],
)
def test_https_failures_are_transient_and_never_show_the_token(
    open_writer: OpenWriter, tmp_path: Path, user_info: str, credentials: GitCredentials
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://{user_info}127.0.0.1:{port}/org/repo.git"
    writer = open_writer(url, credentials=credentials)

    with pytest.raises(StatusUnreachableError, match="could not be reached") as caught:
        writer.push({"runs/a.json": b"a\n"}, message="a")

    assert "s3cr3t-t0ken" not in str(caught.value)
    assert "s3cr3t-t0ken" not in writer.display_url
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"s3cr3t-t0ken" not in stored


# -- retention -------------------------------------------------------------------------------


def keep_newest_three(files: Mapping[str, str]) -> list[str]:
    runs = sorted(path for path in files if path.startswith("runs/etl/"))
    return runs[:-3]


@pytest.mark.parametrize(
    "shape", [pytest.param("one-batch", id="one-batch"), pytest.param("ten-batches", id="ten")]
)
def test_prune_keeps_the_three_newest_runs(
    remote: Remote, open_writer: OpenWriter, shape: str
) -> None:
    writer = open_writer()
    writer.push({"README": b"kept\n"}, message="start")
    runs = {f"runs/etl/{n:04d}.json": f"{n}\n".encode() for n in range(1, 11)}
    if shape == "one-batch":
        writer.push(dict(runs), message="ten runs", prune=keep_newest_three)
    else:
        for path, content in runs.items():
            writer.push({path: content}, message=path, prune=keep_newest_three)

    assert branch_files(remote.bare) == {
        "README": b"kept\n",
        "runs/etl/0008.json": b"8\n",
        "runs/etl/0009.json": b"9\n",
        "runs/etl/0010.json": b"10\n",
    }


def test_prune_is_evaluated_again_on_the_base_of_a_retry(
    remote: Remote, open_writer: OpenWriter, rival: Rival
) -> None:
    seen: list[set[str]] = []

    def prune(files: Mapping[str, str]) -> list[str]:
        seen.append(set(files))
        return keep_newest_three(files)

    def race_once(fetch: int) -> None:
        if fetch == 1:
            rival.push("runs/etl/0010.json", b"10 (theirs)\n")

    open_writer().push(
        {f"runs/etl/{n:04d}.json": f"{n}\n".encode() for n in range(1, 9)}, message="8"
    )
    writer = open_writer(cls=RacedWriter, after_fetch=race_once)
    writer.push({"runs/etl/0009.json": b"9\n"}, message="9", prune=prune)

    assert len(seen) == 2
    assert "runs/etl/0010.json" not in seen[0]
    assert "runs/etl/0010.json" in seen[1]
    assert "runs/etl/0009.json" in seen[0]  # the writes are applied before prune sees them
    assert branch_files(remote.bare) == {
        "runs/etl/0008.json": b"8\n",
        "runs/etl/0009.json": b"9\n",
        "runs/etl/0010.json": b"10 (theirs)\n",
    }


@pytest.mark.parametrize(
    "race_on_push", [pytest.param(None, id="alone"), pytest.param(4, id="rival-during-squash")]
)
def test_squash_keeps_history_short_and_every_file(
    remote: Remote, open_writer: OpenWriter, rival: Rival, race_on_push: int | None
) -> None:
    pushes = [0]

    def race(fetch: int) -> None:
        if pushes[0] == race_on_push and fetch == race_on_push:
            rival.push("runs/theirs.json", b"theirs\n")

    writer = open_writer(cls=RacedWriter, after_fetch=race, squash_depth=3)
    depths = []
    for n in range(1, 6):
        pushes[0] = n
        writer.push({f"runs/{n}.json": f"{n}\n".encode()}, message=f"run {n}")
        depths.append(depth(remote.bare))

    expected = {f"runs/{n}.json": f"{n}\n".encode() for n in range(1, 6)}
    if race_on_push is not None:
        expected["runs/theirs.json"] = b"theirs\n"
        assert writer.retry_count == 1
    assert branch_files(remote.bare) == expected
    assert max(depths) <= 3
    assert depths == [1, 2, 3, 1, 2]
    squashed = git(remote.bare, "rev-list", "--max-parents=0", "status")
    assert "History squashed" in git(remote.bare, "log", "-1", "--format=%B", squashed)
    assert "History squashed" not in git(remote.bare, "log", "-1", "--format=%B", "status")
    assert run_git(remote.bare, "merge-base", "main", "status").returncode == 1


# -- signing, ssh, settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "signed", [pytest.param(True, id="signed"), pytest.param(False, id="unsigned")]
)
def test_commits_are_signed_with_the_ssh_key(
    remote: Remote, open_writer: OpenWriter, tmp_path: Path, signed: bool
) -> None:
    key = tmp_path / "signing_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "status", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{AUTHOR_EMAIL} {key.with_suffix('.pub').read_text()}")
    writer = open_writer(signing_key=key if signed else None)

    commit = writer.push({"runs/a.json": b"a\n"}, message="signed run")
    verified = run_git(
        remote.bare, "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", commit
    )

    assert (verified.returncode == 0) is signed, verified.stderr
    if signed:
        assert 'Good "git" signature' in verified.stderr


@pytest.mark.parametrize(
    ("key", "error"),
    [
        pytest.param("client_key", None, id="accepted-key"),
        pytest.param("other_key", StatusAuthError, id="refused-key"),
    ],
)
def test_status_over_ssh(
    remote: Remote,
    open_writer: OpenWriter,
    sshd: SshServer,
    key: str,
    error: type[Exception] | None,
) -> None:
    credentials = GitCredentials(ssh_key_file=getattr(sshd, key), known_hosts_file=sshd.known_hosts)
    writer = open_writer(sshd.url(remote.bare), credentials=credentials)

    if error is not None:
        with pytest.raises(error, match="SSH authentication"):
            writer.push({"runs/a.json": b"over ssh\n"}, message="ssh")
        return
    first = writer.push({"runs/a.json": b"over ssh\n"}, message="ssh")
    assert writer.push({"runs/b.json": b"b\n"}, message="ssh again") != first
    assert branch_files(remote.bare) == {"runs/a.json": b"over ssh\n", "runs/b.json": b"b\n"}
    assert writer.read("runs/a.json") == b"over ssh\n"
    assert set(writer.list_files()) == {"runs/a.json", "runs/b.json"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"branch": "main"}, "must differ from the manifests branch", id="same-branch"),
        pytest.param({"branch": "bad..name"}, "not a valid git branch", id="bad-branch"),
        pytest.param({"source_branch": "-x"}, "not a valid git branch", id="bad-source-branch"),
        pytest.param({"max_attempts": 0}, "max_attempts", id="no-attempts"),
        pytest.param({"squash_depth": 0}, "squash_depth", id="zero-squash-depth"),
        pytest.param({"timeout_seconds": 0}, "timeout_seconds", id="zero-timeout"),
        pytest.param({"signing_key": Path("/no/such/key")}, "does not exist", id="no-signing-key"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    open_writer: OpenWriter, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(StatusConfigError, match=message) as caught:
        open_writer(**kwargs)
    assert isinstance(caught.value, TerminalError)


def test_an_unusable_url_is_refused(open_writer: OpenWriter) -> None:
    with pytest.raises(StatusConfigError, match="not a repository URL"):
        open_writer("-upload-pack=evil")
