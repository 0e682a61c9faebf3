"""GitSource against real git: a bare repository as the remote, a clone to push from."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.gitsource import (
    GitCredentials,
    GitSource,
    SourceAuthError,
    SourceCacheError,
    SourceRefError,
    SourceUnreachableError,
)
from reconciler.core.names import Revision
from reconciler.core.problems import Problem
from reconciler.ports import CommitInfo, Snapshot, TransientError
from tests.sshservers import SshServer

AUTHOR = "Test Author <author@example.test>"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return result.stdout.strip()


@dataclass(frozen=True)
class Upstream:
    """The remote (a bare repository) and a work clone that commits and pushes to it."""

    bare: Path
    work: Path

    def write(self, rel: str, content: bytes) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    def link(self, rel: str, target: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def commit(self, message: str, *, date: str | None = None) -> Revision:
        git(self.work, "add", "-A")
        dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else None
        git(self.work, "commit", "-q", "--allow-empty", "-m", message, env=dates)
        return Revision(git(self.work, "rev-parse", "HEAD"))

    def push(self, *, force: bool = False) -> None:
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", "HEAD:main")

    def commit_and_push(self, message: str, *, date: str | None = None) -> Revision:
        revision = self.commit(message, date=date)
        self.push()
        return revision

    def blob(self, revision: str, rel: str) -> str:
        return git(self.bare, "rev-parse", f"{revision}:{rel}")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    git(work, "config", "user.name", "Test Author")
    git(work, "config", "user.email", "author@example.test")
    git(work, "config", "commit.gpgsign", "false")
    git(work, "remote", "add", "origin", str(bare))
    return Upstream(bare, work)


OpenSource = Callable[..., GitSource]


@pytest.fixture
def open_source(tmp_path: Path) -> Iterator[OpenSource]:
    """GitSource(url, **kwargs) with a per-test cache, closed at teardown."""
    sources: list[GitSource] = []

    def open_(url: str | Path, **kwargs: Any) -> GitSource:
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        source = GitSource(str(url), **kwargs)
        sources.append(source)
        return source

    yield open_
    for source in sources:
        source.close()


def contents(source: GitSource, snapshot: Snapshot) -> dict[str, bytes]:
    blobs = source.read_blobs(set(snapshot.files.values()))
    return {path: blobs[blob] for path, blob in snapshot.files.items()}


# -- polling and fetching -------------------------------------------------------


def test_latest_revision_is_one_remote_lookup_and_no_fetch(
    upstream: Upstream, open_source: OpenSource
) -> None:
    upstream.write("a.yaml", b"a\n")
    first = upstream.commit_and_push("first")
    source = open_source(upstream.bare)

    assert source.latest_revision() == first
    assert (source.remote_lookups, source.fetch_count) == (1, 0)

    second = upstream.commit_and_push("second")
    assert source.latest_revision() == second
    assert (source.remote_lookups, source.fetch_count) == (2, 0)


def test_snapshot_fetches_only_when_the_commit_is_missing(
    upstream: Upstream, open_source: OpenSource
) -> None:
    upstream.write("a.yaml", b"a\n")
    first = upstream.commit_and_push("first")
    source = open_source(upstream.bare)

    assert source.snapshot(first).files == {"a.yaml": upstream.blob(first, "a.yaml")}
    assert source.fetch_count == 1
    source.snapshot(first)
    assert source.fetch_count == 1

    restarted = open_source(upstream.bare)  # same cache_dir: the mirror is reused
    assert restarted.snapshot(first).revision == first
    assert restarted.fetch_count == 0

    upstream.write("b.yaml", b"b\n")
    second = upstream.commit_and_push("second")
    assert set(source.snapshot(second).files) == {"a.yaml", "b.yaml"}
    assert source.fetch_count == 2
    assert source.remote_lookups == 0


def test_snapshot_blob_ids_are_git_blob_ids_and_read_blobs_returns_exact_bytes(
    upstream: Upstream, open_source: OpenSource
) -> None:
    files = {
        "plain.yaml": b"name: plain\n",
        "crlf.yaml": b"a: 1\r\nb: 2\r\n",
        "binary.bin": bytes(range(256)),
        "empty.yaml": b"",
        "deep/er/still.yml": "naïve: ü\n".encode(),
    }
    for rel, content in files.items():
        upstream.write(rel, content)
    revision = upstream.commit_and_push("files")
    source = open_source(upstream.bare)

    snapshot = source.snapshot(revision)

    assert snapshot.files == {rel: upstream.blob(revision, rel) for rel in sorted(files)}
    assert contents(source, snapshot) == files
    assert snapshot.problems == ()


def test_snapshot_records_the_commit(upstream: Upstream, open_source: OpenSource) -> None:
    upstream.write("a.yaml", b"a\n")
    revision = upstream.commit("Add a\n\nWith a body.", date="2024-03-10T12:30:00+05:00")
    upstream.push()

    snapshot = open_source(upstream.bare).snapshot(revision)

    assert snapshot.commit == CommitInfo(
        revision, AUTHOR, "Add a\n\nWith a body.", datetime(2024, 3, 10, 7, 30, tzinfo=UTC)
    )


Change = Callable[[Upstream], None]


def _modify(up: Upstream) -> None:
    up.write("keep.yaml", b"keep: changed\n")


def _add(up: Upstream) -> None:
    up.write("dir/new.yaml", b"new\n")


def _delete(up: Upstream) -> None:
    (up.work / "gone.yaml").unlink()


def _rename(up: Upstream) -> None:
    (up.work / "gone.yaml").rename(up.work / "moved/here.yaml")


def _nothing(up: Upstream) -> None:
    return None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            _modify, {"keep.yaml": b"keep: changed\n", "gone.yaml": b"gone\n"}, id="modify"
        ),
        pytest.param(
            _add,
            {"keep.yaml": b"keep\n", "gone.yaml": b"gone\n", "dir/new.yaml": b"new\n"},
            id="add",
        ),
        pytest.param(_delete, {"keep.yaml": b"keep\n"}, id="delete"),
        pytest.param(_rename, {"keep.yaml": b"keep\n", "moved/here.yaml": b"gone\n"}, id="rename"),
        pytest.param(_nothing, {"keep.yaml": b"keep\n", "gone.yaml": b"gone\n"}, id="empty-commit"),
    ],
)
def test_snapshot_follows_changes(
    upstream: Upstream, open_source: OpenSource, change: Change, expected: dict[str, bytes]
) -> None:
    upstream.write("keep.yaml", b"keep\n")
    upstream.write("gone.yaml", b"gone\n")
    (upstream.work / "moved").mkdir()
    before = upstream.commit_and_push("before")
    source = open_source(upstream.bare)
    old = source.snapshot(before)

    change(upstream)
    after = upstream.commit_and_push("after")
    new = source.snapshot(source.latest_revision())

    assert new.revision == after
    assert contents(source, new) == expected
    assert new.files == {rel: upstream.blob(after, rel) for rel in expected}
    if change is _rename:  # a rename keeps the blob id: the core can see it is a move
        assert new.files["moved/here.yaml"] == old.files["gone.yaml"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("deploy/manifests", id="plain"),
        pytest.param("deploy/manifests/", id="trailing-slash"),
        pytest.param("/deploy/manifests", id="leading-slash"),
        pytest.param("./deploy//manifests", id="dot-and-double-slash"),
    ],
)
def test_sub_path_lists_files_relative_to_it(
    upstream: Upstream, open_source: OpenSource, path: str
) -> None:
    upstream.write("README.md", b"readme\n")
    upstream.write("deploy/other.yaml", b"other\n")
    upstream.write("deploy/manifests/a.yaml", b"a\n")
    upstream.write("deploy/manifests/team/b.yaml", b"b\n")
    revision = upstream.commit_and_push("tree")

    snapshot = open_source(upstream.bare, path=path).snapshot(revision)

    assert snapshot.files == {
        "a.yaml": upstream.blob(revision, "deploy/manifests/a.yaml"),
        "team/b.yaml": upstream.blob(revision, "deploy/manifests/team/b.yaml"),
    }
    assert snapshot.problems == ()


@pytest.mark.parametrize(
    ("path", "what"),
    [
        pytest.param("nowhere", "does not exist", id="missing"),
        pytest.param("deploy/nowhere", "does not exist", id="missing-below-existing"),
        pytest.param("deploy/a.yaml", "is not a directory", id="a-file"),
    ],
)
def test_missing_manifests_path_is_a_problem_with_no_files(
    upstream: Upstream, open_source: OpenSource, path: str, what: str
) -> None:
    upstream.write("deploy/a.yaml", b"a\n")
    revision = upstream.commit_and_push("tree")

    snapshot = open_source(upstream.bare, path=path).snapshot(revision)

    assert snapshot.files == {}
    [problem] = snapshot.problems
    assert problem.path == path
    assert f"the manifests path '{path}' {what}" in problem.message


# -- symlinks and submodules ------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reads", "message"),
    [
        pytest.param("real.yaml", "manifests/real.yaml", None, id="same-directory"),
        pytest.param("./team/../real.yaml", "manifests/real.yaml", None, id="dot-dot-inside"),
        pytest.param("../shared/s.yaml", "shared/s.yaml", None, id="elsewhere-in-repo"),
        pytest.param("../shared/via-link.yaml", "shared/s.yaml", None, id="chain-of-links"),
        pytest.param("../shared-dir/s.yaml", "shared/s.yaml", None, id="through-dir-link"),
        pytest.param("/etc/passwd", None, "leads outside the repository", id="absolute"),
        pytest.param("../../outside", None, "leads outside the repository", id="dot-dot-out"),
        pytest.param("../shared/abs.yaml", None, "leads outside the repository", id="to-abs-link"),
        pytest.param("nothere.yaml", None, "leads to a file that does not exist", id="missing"),
        pytest.param("real.yaml/x", None, "leads to a file that does not exist", id="file-as-dir"),
        pytest.param("link.yaml", None, "loops", id="self-loop"),
        pytest.param("../shared", None, "leads to a directory", id="directory"),
    ],
)
def test_symlinks_are_read_only_when_they_lead_to_a_file_in_the_repository(
    upstream: Upstream,
    open_source: OpenSource,
    target: str,
    reads: str | None,
    message: str | None,
) -> None:
    upstream.write("manifests/real.yaml", b"real\n")
    upstream.write("manifests/team/t.yaml", b"team\n")
    upstream.write("shared/s.yaml", b"shared\n")
    upstream.link("shared/via-link.yaml", "s.yaml")
    upstream.link("shared/abs.yaml", "/etc/hostname")
    upstream.link("shared-dir", "shared")
    upstream.link("manifests/link.yaml", target)
    revision = upstream.commit_and_push("links")
    source = open_source(upstream.bare, path="manifests")

    snapshot = source.snapshot(revision)

    if reads is not None:
        assert snapshot.problems == ()
        assert snapshot.files["link.yaml"] == upstream.blob(revision, reads)
        assert source.read_blobs([snapshot.files["link.yaml"]]) == {
            upstream.blob(revision, reads): (upstream.work / reads).read_bytes()
        }
    else:
        assert "link.yaml" not in snapshot.files
        expected = f"symlink to '{target}' {message}"
        assert [(p.path, p.line, p.field) for p in snapshot.problems] == [("link.yaml", None, "")]
        assert snapshot.problems[0].message.startswith(expected)
        assert snapshot.problems[0].message.endswith("not read")
    assert snapshot.files["real.yaml"] == upstream.blob(revision, "manifests/real.yaml")


def test_a_submodule_is_a_problem_not_a_file(upstream: Upstream, open_source: OpenSource) -> None:
    upstream.write("a.yaml", b"a\n")
    inner = upstream.commit("inner")
    git(upstream.work, "update-index", "--add", "--cacheinfo", f"160000,{inner},vendor/sub")
    git(upstream.work, "commit", "-q", "-m", "add a submodule")
    upstream.push()
    revision = Revision(git(upstream.work, "rev-parse", "HEAD"))

    snapshot = open_source(upstream.bare).snapshot(revision)

    assert set(snapshot.files) == {"a.yaml"}
    assert snapshot.problems == (
        Problem(
            "vendor/sub",
            None,
            None,
            "",
            f"is a submodule (commit {inner[:12]}); submodules are not read",
        ),
    )


# -- history -------------------------------------------------------------------------


def test_commits_between_lists_new_commits_newest_first(
    upstream: Upstream, open_source: OpenSource
) -> None:
    old = upstream.commit_and_push("zero", date="2024-01-01T00:00:00Z")
    one = upstream.commit("one", date="2024-01-02T00:00:00+01:00")
    two = upstream.commit("two\n\nbody", date="2024-01-03T00:00:00Z")
    upstream.push()
    source = open_source(upstream.bare)

    commits = source.commits_between(old, two)

    assert commits == [
        CommitInfo(two, AUTHOR, "two\n\nbody", datetime(2024, 1, 3, tzinfo=UTC)),
        CommitInfo(one, AUTHOR, "one", datetime(2024, 1, 1, 23, tzinfo=UTC)),
    ]
    assert source.commits_between(two, two) == []
    assert [c.revision for c in source.commits_between(None, two)] == [two]
    assert [c.revision for c in source.commits_between(Revision("0" * 40), two)] == [two]
    assert [c.revision for c in source.commits_between(two, one)] == [one]  # new is older


def test_force_push_to_unrelated_history(upstream: Upstream, open_source: OpenSource) -> None:
    upstream.write("old.yaml", b"old\n")
    old = upstream.commit_and_push("old history")
    source = open_source(upstream.bare)
    assert set(source.snapshot(old).files) == {"old.yaml"}

    git(upstream.work, "checkout", "-q", "--orphan", "rewritten")
    git(upstream.work, "rm", "-rq", "--cached", ".")
    (upstream.work / "old.yaml").unlink()
    upstream.write("new.yaml", b"new\n")
    new = upstream.commit("new history")
    upstream.push(force=True)

    assert source.latest_revision() == new
    snapshot = source.snapshot(new)
    assert contents(source, snapshot) == {"new.yaml": b"new\n"}
    assert [c.revision for c in source.commits_between(old, new)] == [new]
    assert source.fetch_count == 2


def test_a_revision_gone_from_the_remote_is_unreachable(
    upstream: Upstream, open_source: OpenSource, tmp_path: Path
) -> None:
    upstream.write("a.yaml", b"a\n")
    old = upstream.commit_and_push("old")
    git(upstream.work, "commit", "-q", "--amend", "-m", "rewritten")
    upstream.push(force=True)
    git(upstream.bare, "reflog", "expire", "--expire=now", "--all")
    git(upstream.bare, "gc", "-q", "--prune=now")
    source = open_source(upstream.bare, cache_dir=tmp_path / "fresh-cache")

    with pytest.raises(SourceUnreachableError, match=f"revision {old[:12]} is no longer on branch"):
        source.snapshot(old)
    assert source.fetch_count == 1


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("{tmp}/does-not-exist.git", "there is no git repository at", id="no-path"),
        pytest.param("file://{tmp}/nope.git", "there is no git repository at", id="no-file-url"),
        pytest.param("{tmp}/not-a-repo", "there is no git repository at", id="not-a-repo"),
        pytest.param("ssh://git@127.0.0.1:1/x", "could not be reached", id="ssh-refused"),
        pytest.param("https://nohost.invalid/x.git", "could not be resolved", id="https-dns"),
        pytest.param("git@nohost.invalid:org/x.git", "could not be resolved", id="scp-dns"),
        pytest.param(
            "https://127.0.0.1:{closed}/x.git", "could not be reached", id="https-refused"
        ),
    ],
)
def test_an_unreachable_remote_is_a_transient_error(
    open_source: OpenSource, tmp_path: Path, closed_port: int, url: str, message: str
) -> None:
    (tmp_path / "not-a-repo").mkdir()
    source = open_source(url.format(tmp=tmp_path, closed=closed_port))

    with pytest.raises(SourceUnreachableError, match=message) as caught:
        source.latest_revision()
    assert isinstance(caught.value, TransientError)
    assert "check" in str(caught.value)
    with pytest.raises(SourceUnreachableError):
        source.snapshot(Revision("1" * 40))


def test_a_missing_branch_is_a_ref_error(upstream: Upstream, open_source: OpenSource) -> None:
    upstream.write("a.yaml", b"a\n")
    first = upstream.commit_and_push("first")
    source = open_source(upstream.bare)
    assert source.latest_revision() == first
    with pytest.raises(SourceRefError, match=f"branch 'other' does not exist on {upstream.bare}"):
        open_source(upstream.bare, branch="other").latest_revision()

    upstream.write("b.yaml", b"b\n")
    second = upstream.commit("second")  # committed, never pushed
    git(upstream.bare, "update-ref", "-d", "refs/heads/main")

    with pytest.raises(SourceRefError, match=f"branch 'main' does not exist on {upstream.bare}"):
        source.latest_revision()
    with pytest.raises(SourceRefError, match="branch 'main' does not exist"):
        source.snapshot(second)


@pytest.mark.parametrize(
    ("url", "credentials", "shown"),
    [
        pytest.param(
            "https://robot:s3cr3t-t0ken@127.0.0.1:{port}/org/repo.git",
            GitCredentials(),
            "https://127.0.0.1:{port}/org/repo.git",
            id="user-and-token-in-url",
        ),
        pytest.param(
            "https://s3cr3t-t0ken@127.0.0.1:{port}/org/repo.git",
            GitCredentials(),
            "https://127.0.0.1:{port}/org/repo.git",
            id="token-as-url-user",
        ),
        pytest.param(
            "https://127.0.0.1:{port}/org/repo.git",
            GitCredentials(token="s3cr3t-t0ken"),
            "https://127.0.0.1:{port}/org/repo.git",
            id="token-in-credentials",
        ),
    ],
)
def test_a_token_is_never_shown(
    open_source: OpenSource, closed_port: int, url: str, credentials: GitCredentials, shown: str
) -> None:
    source = open_source(url.format(port=closed_port), credentials=credentials)

    assert source.display_url == shown.format(port=closed_port)
    with pytest.raises(SourceUnreachableError) as caught:
        source.latest_revision()
    assert "s3cr3t-t0ken" not in str(caught.value)
    assert shown.format(port=closed_port) in str(caught.value)
    assert "s3cr3t-t0ken" not in repr(credentials)


def test_a_remote_that_does_not_answer_times_out(open_source: OpenSource) -> None:
    with _silent_listener() as port:
        source = open_source(f"http://127.0.0.1:{port}/repo.git", timeout_seconds=1)
        with pytest.raises(SourceUnreachableError, match="did not finish within 1 seconds"):
            source.latest_revision()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("https://u:p@example.test/r.git", "https://example.test/r.git", id="https"),
        pytest.param(
            "ssh://git@example.test:2222/r.git", "ssh://git@example.test:2222/r.git", id="ssh"
        ),
        pytest.param(
            "ssh://git:pw@example.test/r.git", "ssh://git@example.test/r.git", id="ssh-pw"
        ),
        pytest.param("git@example.test:org/r.git", "git@example.test:org/r.git", id="scp-style"),
        pytest.param("file:///srv/r.git", "file:///srv/r.git", id="file-url"),
        pytest.param("/srv/r.git", "/srv/r.git", id="absolute-path"),
    ],
)
def test_display_url(tmp_path: Path, url: str, shown: str) -> None:
    assert GitSource(url, cache_dir=tmp_path).display_url == shown


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert GitSource("sub/r.git", cache_dir=tmp_path).display_url == str(tmp_path / "sub/r.git")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"url": "--upload-pack=touch /tmp/x"}, id="option-as-url"),
        pytest.param({"url": "/r.git", "branch": "-x"}, id="option-as-branch"),
        pytest.param({"url": "/r.git", "branch": "a..b"}, id="bad-branch"),
        pytest.param({"url": "/r.git", "path": "../up"}, id="path-leaves-repo"),
        pytest.param({"url": "ftp://example.test/r.git"}, id="unsupported-scheme"),
        pytest.param({"url": "/r.git", "timeout_seconds": 0}, id="zero-timeout"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message names its own setting
        GitSource(cache_dir=tmp_path, **kwargs)


def test_a_bad_revision_is_a_ref_error(upstream: Upstream, open_source: OpenSource) -> None:
    upstream.write("a.yaml", b"a\n")
    revision = upstream.commit_and_push("first")
    source = open_source(upstream.bare)
    tree = upstream.blob(revision, "")  # exists, but is a tree

    with pytest.raises(SourceRefError, match="not a git commit id"):
        source.snapshot(Revision("main"))
    source.snapshot(revision)
    with pytest.raises(SourceRefError, match="is a tree, not a commit"):
        source.snapshot(Revision(tree))


def test_an_unusable_cache_dir_is_a_cache_error(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit_and_push("first")
    not_a_directory = tmp_path / "cache-file"
    not_a_directory.write_text("")
    source = GitSource(str(upstream.bare), cache_dir=not_a_directory)

    with pytest.raises(SourceCacheError, match="check that cache_dir is writable"):
        source.latest_revision()


def test_read_blobs_uses_one_persistent_cat_file_that_close_ends(
    upstream: Upstream, open_source: OpenSource
) -> None:
    for index in range(20):
        upstream.write(f"f{index}.yaml", f"n: {index}\n".encode())
    revision = upstream.commit_and_push("many")
    source = open_source(upstream.bare)
    snapshot = source.snapshot(revision)

    first = contents(source, snapshot)
    readers = _cat_file_processes(source.mirror_dir)
    assert len(readers) == 2  # --batch and --batch-check, for every blob of every call
    assert contents(source, snapshot) == first
    assert _cat_file_processes(source.mirror_dir) == readers

    source.close()
    assert _cat_file_processes(source.mirror_dir) == set()
    assert contents(source, snapshot) == first  # restarts after close


# -- credentials over real transports ------------------------------------------------


def test_an_http_token_is_sent_as_basic_auth_and_never_stored(
    upstream: Upstream, open_source: OpenSource, tmp_path: Path
) -> None:
    upstream.write("a.yaml", b"a\n")
    revision = upstream.commit_and_push("first")
    git(upstream.bare, "update-server-info")
    expected = "Basic " + base64.b64encode(b"x-access-token:s3cr3t-t0ken").decode()

    with _dumb_http_server(upstream.bare, expected) as (port, seen):
        url = f"http://127.0.0.1:{port}/"
        good = open_source(url, credentials=GitCredentials(token="s3cr3t-t0ken"))
        assert good.latest_revision() == revision
        assert contents(good, good.snapshot(revision)) == {"a.yaml": b"a\n"}
        assert set(seen) == {expected}

        in_url = open_source(f"http://robot:s3cr3t-t0ken@127.0.0.1:{port}/")
        with pytest.raises(SourceAuthError, match="refused the credentials") as caught:
            in_url.latest_revision()  # the server wants user x-access-token, not robot
        assert "s3cr3t-t0ken" not in str(caught.value)

        wrong = open_source(url, credentials=GitCredentials(token="wr0ng-t0ken"))
        with pytest.raises(SourceAuthError, match="check the token") as caught:
            wrong.latest_revision()
        assert "wr0ng-t0ken" not in str(caught.value)

    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"s3cr3t-t0ken" not in stored
    assert expected.split()[1].encode() not in stored


def test_git_over_ssh(upstream: Upstream, open_source: OpenSource, sshd: SshServer) -> None:
    upstream.write("a.yaml", b"over ssh\n")
    revision = upstream.commit_and_push("first")
    credentials = GitCredentials(ssh_key_file=sshd.client_key, known_hosts_file=sshd.known_hosts)
    source = open_source(sshd.url(upstream.bare), credentials=credentials)

    assert source.latest_revision() == revision
    snapshot = source.snapshot(revision)
    assert contents(source, snapshot) == {"a.yaml": b"over ssh\n"}
    assert (source.remote_lookups, source.fetch_count) == (1, 1)


@pytest.mark.parametrize(
    ("key", "known_hosts", "strict", "error"),
    [
        pytest.param(
            "client_key", "empty_known_hosts", True, "SSH host key", id="unknown-host-key"
        ),
        pytest.param(
            "client_key", "wrong_known_hosts", True, "SSH host key", id="changed-host-key"
        ),
        pytest.param("other_key", "known_hosts", True, "SSH authentication", id="wrong-client-key"),
        pytest.param("missing_key", "known_hosts", True, "SSH authentication", id="no-key-file"),
        pytest.param("client_key", "empty_known_hosts", False, None, id="not-strict-accepts"),
    ],
)
def test_ssh_host_key_and_client_key_checks(
    upstream: Upstream,
    open_source: OpenSource,
    sshd: SshServer,
    tmp_path: Path,
    key: str,
    known_hosts: str,
    strict: bool,
    error: str | None,
) -> None:
    revision = upstream.commit_and_push("first")
    wrong_known_hosts = tmp_path / "wrong_known_hosts"
    other_public = " ".join((sshd.other_key.with_suffix(".pub")).read_text().split()[:2])
    wrong_known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other_public}\n")
    files = {
        "client_key": sshd.client_key,
        "other_key": sshd.other_key,
        "missing_key": tmp_path / "no-such-key",
        "known_hosts": sshd.known_hosts,
        "empty_known_hosts": tmp_path / "empty_known_hosts",
        "wrong_known_hosts": wrong_known_hosts,
    }
    files["empty_known_hosts"].write_text("")
    credentials = GitCredentials(
        ssh_key_file=files[key],
        known_hosts_file=files[known_hosts],
        strict_host_key_checking=strict,
    )
    source = open_source(sshd.url(upstream.bare), credentials=credentials)

    if error is None:
        assert source.latest_revision() == revision
    else:
        with pytest.raises(SourceAuthError, match=error) as caught:
            source.latest_revision()
        assert "check" in str(caught.value)


# -- helpers -------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def _silent_listener() -> Iterator[int]:
    """A port whose connections are accepted into the backlog and never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port: int = listener.getsockname()[1]
        yield port


@contextmanager
def _dumb_http_server(root: Path, authorization: str) -> Iterator[tuple[int, list[str]]]:
    """Serves a bare repository over git's dumb HTTP protocol, behind basic auth.

    Yields the port and the Authorization headers the server was sent.
    """
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            given = self.headers.get("Authorization")
            if given is not None:
                seen.append(given)
            if given != authorization:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _cat_file_processes(mirror: Path) -> set[int]:
    """Pids of git cat-file processes working in the mirror (Linux /proc)."""
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # the process ended, or is not ours to inspect
        if b"cat-file" in cmdline and Path(cwd) == mirror:
            pids.add(int(proc.name))
    return pids
