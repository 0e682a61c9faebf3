"""Desired state from a plain directory, for the ``--watch`` dev mode.

A developer edits manifests in a working tree and wants them reconciled
without committing. This source walks the directory (ignoring git entirely,
except that ``.git/`` directories are skipped), names each file by its git
blob id so the loader's blob cache works as with ``GitSource``, and derives a
revision from the whole listing so an unchanged tree gives an unchanged
revision. Symlinks are read only when they resolve to a file inside the
directory; anything else is reported as a problem, never read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.names import Revision
from reconciler.core.problems import Problem
from reconciler.core.signing import CommitCheck
from reconciler.ports import CommitInfo, Snapshot, TerminalError, TransientError

REVISION_PREFIX = "dir:"


def blob_id(data: bytes) -> str:
    """The id git gives a file with these contents (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _Walk:
    revision: Revision
    files: dict[str, str]
    problems: tuple[Problem, ...]
    blobs: dict[str, bytes] = field(repr=False)


class DirectorySource:
    """A ``Source`` over a directory on disk; each walk is one revision."""

    def __init__(self, directory: Path) -> None:
        self._directory = Path(os.path.abspath(directory))
        self._last: _Walk | None = None

    @property
    def display_url(self) -> str:
        return str(self._directory)

    def latest_revision(self) -> Revision:
        """Walk the directory now; the revision is a hash of every (path, blob id)."""
        self._last = self._walk()
        return self._last.revision

    def snapshot(self, revision: Revision) -> Snapshot:
        last = self._last
        if last is None or revision != last.revision:
            latest = last.revision if last else "none yet"
            raise TerminalError(
                f"revision {revision} of {self.display_url} is not the latest walk "
                f"({latest}); a directory keeps no history, so call latest_revision() first"
            )
        return Snapshot(revision, dict(last.files), last.problems, None)

    def read_blobs(self, blob_ids: Collection[str]) -> dict[str, bytes]:
        last = self._last
        blobs = last.blobs if last else {}
        missing = sorted(set(blob_ids) - blobs.keys())
        if missing:
            raise TerminalError(
                f"blob {missing[0]} is not in the latest walk of {self.display_url}; "
                "read blobs of the latest snapshot only"
            )
        return {blob: blobs[blob] for blob in blob_ids}

    def commits_between(self, old: Revision | None, new: Revision) -> list[CommitInfo]:
        """A directory has no commits."""
        return []

    def check_commit(self, revision: Revision, allowed_signers: Path) -> CommitCheck:
        raise TerminalError(
            f"{self._directory} is a plain directory: verifying signed commits needs a git "
            "source (--repo URL or repository); switch verify_commits off for a directory"
        )

    def close(self) -> None:
        """Drop the contents kept from the last walk."""
        self._last = None

    # -- walking --------------------------------------------------------------

    def _walk(self) -> _Walk:
        root = self._directory
        if not root.is_dir():
            raise TransientError(
                f"{root} does not exist or is not a directory; check the path given to --watch"
            )
        real_root = Path(os.path.realpath(root))
        files: dict[str, str] = {}
        blobs: dict[str, bytes] = {}
        problems: list[Problem] = []

        def listing_failed(exc: OSError) -> None:
            where = Path(exc.filename or root)
            problems.append(_problem(_relpath(root, where), f"cannot be listed: {exc.strerror}"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=listing_failed):
            here = Path(dirpath)
            kept: list[str] = []
            linked: list[str] = []
            for name in dirnames:
                if (here / name).is_symlink():
                    linked.append(name)  # checked like a file: it is never walked into
                elif name != ".git":
                    kept.append(name)
            dirnames[:] = sorted(kept)
            for name in sorted([*filenames, *linked]):
                full = here / name
                rel = _relpath(root, full)
                read = _read_file(full, real_root=real_root, rel=rel)
                if isinstance(read, Problem):
                    problems.append(read)
                elif read is not None:
                    blob = blob_id(read)
                    files[rel] = blob
                    blobs[blob] = read
        problems.sort()
        return _Walk(
            _revision_of(files, problems), dict(sorted(files.items())), tuple(problems), blobs
        )


def _problem(rel: str, message: str) -> Problem:
    return Problem(rel, None, None, "", message)


def _relpath(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_link(link: Path, *, real_root: Path, rel: str) -> Problem | None:
    """None when the symlink resolves inside real_root to something not a directory."""
    try:
        target = os.readlink(link)
    except OSError as exc:
        return _problem(rel, f"symlink cannot be read: {exc.strerror}")
    quoted = f"symlink to '{target}'"
    if not Path(os.path.realpath(link)).is_relative_to(real_root):
        return _problem(rel, f"{quoted} leads outside the repository; it is not read")
    try:
        mode = os.stat(link).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _problem(rel, f"{quoted} loops (too many levels of symlinks); it is not read")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return _problem(rel, f"{quoted} leads to a file that does not exist; it is not read")
        return _problem(rel, f"{quoted} cannot be followed ({exc.strerror}); it is not read")
    if stat.S_ISDIR(mode):
        return _problem(
            rel, f"{quoted} leads to a directory, which is not followed; it is not read"
        )
    return None


def _read_file(full: Path, *, real_root: Path, rel: str) -> bytes | Problem | None:
    """The file's bytes; a Problem when it may not or cannot be read; None to skip it."""
    try:
        if full.is_symlink():
            problem = _check_link(full, real_root=real_root, rel=rel)
            if problem is not None:
                return problem
            mode = os.stat(full).st_mode
        else:
            mode = os.lstat(full).st_mode
        if not stat.S_ISREG(mode):
            return None  # a FIFO, socket or device: git cannot hold one, so it is no manifest
        return full.read_bytes()
    except FileNotFoundError as exc:
        raise TransientError(
            f"{rel} disappeared while the directory was read; it is read again on the next pass"
        ) from exc
    except OSError as exc:
        return _problem(rel, f"cannot be read: {exc.strerror}")


def _revision_of(files: dict[str, str], problems: list[Problem]) -> Revision:
    digest = hashlib.sha256()
    for path, blob in sorted(files.items()):
        digest.update(f"{path}\0{blob}\n".encode("utf-8", "surrogateescape"))
    for problem in problems:  # a fixed or new problem is a change too
        digest.update(f"!{problem.path}\0{problem.message}\n".encode("utf-8", "surrogateescape"))
    return Revision(REVISION_PREFIX + digest.hexdigest()[:20])
