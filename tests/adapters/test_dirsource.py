"""DirectorySource over real directories: revisions, blob ids, symlinks, stale reads."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.adapters.dirsource import DirectorySource, blob_id
from reconciler.core.names import Revision
from reconciler.ports import TerminalError, TransientError


def write(root: Path, rel: str, content: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def git_blob_id(path: Path) -> str:
    """The id git itself computes, as an oracle independent of the adapter."""
    result = subprocess.run(
        ["git", "hash-object", "--no-filters", str(path)], check=True, capture_output=True
    )
    return result.stdout.decode().strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    write(root, "a.yaml", b"a: 1\n")
    write(root, "team/b.yaml", b"b: 2\r\n")
    write(root, "binary.bin", bytes(range(256)))
    write(root, "empty.yaml", b"")
    return root


def test_files_are_listed_with_git_blob_ids_and_read_back_exactly(tree: Path) -> None:
    source = DirectorySource(tree)

    snapshot = source.snapshot(source.latest_revision())

    expected = ["a.yaml", "binary.bin", "empty.yaml", "team/b.yaml"]
    assert snapshot.files == {rel: git_blob_id(tree / rel) for rel in expected}
    assert list(snapshot.files) == expected
    blobs = source.read_blobs(list(snapshot.files.values()))
    assert {rel: blobs[blob] for rel, blob in snapshot.files.items()} == {
        rel: (tree / rel).read_bytes() for rel in expected
    }
    assert snapshot.problems == ()
    assert snapshot.commit is None


def test_blob_id_is_gits() -> None:
    assert blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_an_unchanged_tree_keeps_its_revision(tree: Path) -> None:
    first = DirectorySource(tree).latest_revision()
    os.utime(tree / "a.yaml", (0, 0))  # a touch is not a change

    assert DirectorySource(tree).latest_revision() == first
    assert first.startswith("dir:")
    assert len(first) == len("dir:") + 20


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: write(root, "a.yaml", b"a: 2\n"), id="modify"),
        pytest.param(lambda root: write(root, "new.yaml", b"new\n"), id="add"),
        pytest.param(lambda root: (root / "a.yaml").unlink(), id="delete"),
        pytest.param(lambda root: (root / "a.yaml").rename(root / "team/a.yaml"), id="rename"),
        pytest.param(lambda root: (root / "bad").symlink_to("/etc/passwd"), id="new-problem"),
    ],
)
def test_any_change_gives_a_new_revision(tree: Path, change: Callable[[Path], object]) -> None:
    source = DirectorySource(tree)
    before = source.latest_revision()

    change(tree)

    assert source.latest_revision() != before


def test_only_git_directories_are_skipped(tree: Path) -> None:
    write(tree, ".git/config", b"[core]\n")
    write(tree, "sub/.git/HEAD", b"ref: refs/heads/main\n")
    write(tree, ".github/workflows/ci.yaml", b"on: push\n")
    write(tree, ".hidden.yaml", b"h\n")
    source = DirectorySource(tree)

    files = source.snapshot(source.latest_revision()).files

    assert ".github/workflows/ci.yaml" in files
    assert ".hidden.yaml" in files
    assert not [rel for rel in files if ".git/" in rel]


@pytest.mark.parametrize(
    ("target", "reads", "message"),
    [
        pytest.param("a.yaml", "a.yaml", None, id="same-directory"),
        pytest.param("team/../a.yaml", "a.yaml", None, id="dot-dot-inside"),
        pytest.param("team/b.yaml", "team/b.yaml", None, id="subdirectory"),
        pytest.param("/etc/passwd", None, "leads outside the repository", id="absolute"),
        pytest.param("../../outside", None, "leads outside the repository", id="dot-dot-out"),
        pytest.param("../outside.yaml", None, "leads outside the repository", id="existing-out"),
        pytest.param("nothere.yaml", None, "leads to a file that does not exist", id="missing"),
        pytest.param("link.yaml", None, "loops", id="self-loop"),
        pytest.param("team", None, "leads to a directory", id="directory"),
    ],
)
def test_symlinks_are_read_only_when_they_lead_to_a_file_inside(
    tree: Path, target: str, reads: str | None, message: str | None
) -> None:
    write(tree.parent, "outside.yaml", b"secret\n")
    (tree / "link.yaml").symlink_to(target)
    source = DirectorySource(tree)

    snapshot = source.snapshot(source.latest_revision())

    if reads is not None:
        assert snapshot.problems == ()
        assert snapshot.files["link.yaml"] == git_blob_id(tree / reads)
        blob = snapshot.files["link.yaml"]
        assert source.read_blobs([blob]) == {blob: (tree / reads).read_bytes()}
    else:
        assert "link.yaml" not in snapshot.files
        assert [(p.path, p.line, p.column, p.field) for p in snapshot.problems] == [
            ("link.yaml", None, None, "")
        ]
        message_text = snapshot.problems[0].message
        assert message_text.startswith(f"symlink to '{target}' {message}")
        assert message_text.endswith("it is not read")
        assert b"secret" not in b"".join(source.read_blobs(set(snapshot.files.values())).values())


def test_a_symlinked_directory_leading_outside_is_a_problem(tree: Path, tmp_path: Path) -> None:
    write(tmp_path, "elsewhere/x.yaml", b"x\n")
    (tree / "linked").symlink_to(tmp_path / "elsewhere")
    source = DirectorySource(tree)

    snapshot = source.snapshot(source.latest_revision())

    assert [p.path for p in snapshot.problems] == ["linked"]
    assert "leads outside the repository" in snapshot.problems[0].message
    assert not [rel for rel in snapshot.files if rel.startswith("linked")]


def test_a_snapshot_is_only_of_the_latest_walk(tree: Path) -> None:
    source = DirectorySource(tree)
    with pytest.raises(TerminalError, match="call latest_revision"):
        source.snapshot(Revision("dir:00000000000000000000"))
    old = source.latest_revision()
    old_blob = source.snapshot(old).files["a.yaml"]

    write(tree, "a.yaml", b"a: changed\n")
    new = source.latest_revision()

    with pytest.raises(TerminalError, match="is not the latest walk"):
        source.snapshot(old)
    with pytest.raises(TerminalError, match=f"blob {old_blob} is not in the latest walk"):
        source.read_blobs([old_blob])
    assert source.read_blobs([source.snapshot(new).files["a.yaml"]]) == {
        blob_id(b"a: changed\n"): b"a: changed\n"
    }


def test_a_missing_directory_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="does not exist or is not a directory"):
        DirectorySource(tmp_path / "gone").latest_revision()


def test_there_are_no_commits_and_the_url_is_the_absolute_path(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree.parent)
    source = DirectorySource(Path("checkout/team/.."))
    revision = source.latest_revision()

    assert source.display_url == str(tree)
    assert source.commits_between(None, revision) == []
    assert source.commits_between(revision, revision) == []
