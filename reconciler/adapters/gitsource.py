"""Desired state from a remote git branch, read through a local bare mirror.

The daemon polls cheaply (one ``git ls-remote`` per tick), fetches only when
a revision is not in the mirror yet, and reads manifests straight from the
commit's tree objects through one persistent ``git cat-file --batch``
process: there is no working tree to get out of step, and a blob id is the
loader's cache key. Credentials travel only in the git process's
environment, never in argv, URLs on disk or messages. Every git or GitPython
failure leaves this module as a typed error: transient (unreachable, auth,
timeout) or terminal (a branch that does not exist).
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Literal
from urllib.parse import unquote, urlsplit

from git import Repo
from git.cmd import Git
from git.exc import GitError

from reconciler.core.names import Revision
from reconciler.core.problems import Problem
from reconciler.core.signing import CommitCheck
from reconciler.ports import (
    NULL_RECORDER,
    CommitInfo,
    Recorder,
    Snapshot,
    TerminalError,
    TransientError,
)


@dataclass(frozen=True)
class GitCredentials:
    """How to authenticate to the remote; never logged, never written to disk."""

    token: str | None = None  # https: basic auth (user "x-access-token" unless username given)
    username: str | None = None
    ssh_key_file: Path | None = None  # ssh:// and scp-style user@host:path
    known_hosts_file: Path | None = None
    strict_host_key_checking: bool = True  # False only when the operator says so

    def __repr__(self) -> str:
        token = "<redacted>" if self.token else None
        return (
            f"GitCredentials(token={token!r}, username={self.username!r}, "
            f"ssh_key_file={self.ssh_key_file!r}, known_hosts_file={self.known_hosts_file!r}, "
            f"strict_host_key_checking={self.strict_host_key_checking!r})"
        )


class SourceAuthError(TransientError):
    """The remote refused the credentials, or its SSH host key was not accepted."""


class SourceUnreachableError(TransientError):
    """The remote (or the revision asked for) could not be reached."""


class SourceRefError(TerminalError):
    """The branch does not exist on the remote (or a revision is not a commit id)."""


class SourceCacheError(TerminalError):
    """The local mirror cannot be created or read."""


_MODE_TYPE = 0o170000
_MODE_TREE = 0o040000
_MODE_FILE = 0o100000
_MODE_LINK = 0o120000
_MODE_GITLINK = 0o160000
_MAX_LINK_HOPS = 40  # as Linux's MAXSYMLINKS
OBJECT_ID = re.compile(r"^[0-9a-f]{40}$")
_GOOD_SIGNATURE = re.compile(r'Good "git" signature for (\S+) with')
_BAD_BRANCH = re.compile(r"(^[-/.])|\.\.|//|@\{|[\x00-\x20~^:?*\[\\\x7f]|(\.lock|/|\.)$")
DETAIL_LIMIT = 300

Transport = Literal["file", "http", "ssh", "git"]
ObjectReader = Callable[[bytes, str], bytes]  # (binary id, expected type) -> object bytes


@dataclass(frozen=True)
class Remote:
    git_url: str  # what git is given: no password or token in it
    display_url: str
    transport: Transport
    url_username: str | None  # userinfo of an http(s) URL, moved out of it
    url_password: str | None


def parse_remote(url: str) -> Remote:
    if not url or url.startswith("-"):
        raise ValueError(f"git URL {url!r} is not a repository URL")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        rest = url.split("://", 1)[1][len(parts.netloc) :]
        if scheme in ("http", "https"):
            clean = f"{scheme}://{hostport}{rest}"
            return Remote(
                clean,
                clean,
                "http",
                unquote(user) if at and user else None,
                unquote(password) if colon else None,
            )
        if scheme in ("ssh", "git+ssh", "ssh+git"):
            kept = f"{user}@" if at and user else ""
            clean = f"{scheme}://{kept}{hostport}{rest}"
            return Remote(clean, clean, "ssh", None, None)
        if scheme == "file":
            return Remote(url, url, "file", None, None)
        if scheme == "git":
            return Remote(url, url, "git", None, None)
        raise ValueError(f"git URL {url!r} has an unsupported scheme {scheme!r}")
    # git's rule: a colon before any slash makes it scp-style user@host:path
    first_colon, first_slash = url.find(":"), url.find("/")
    if first_colon > 0 and (first_slash == -1 or first_colon < first_slash):
        return Remote(url, url, "ssh", None, None)
    local = os.path.abspath(url)
    return Remote(local, local, "file", None, None)


def check_branch(branch: str) -> None:
    if not branch or _BAD_BRANCH.search(branch):
        raise ValueError(f"{branch!r} is not a valid git branch name")


def _normalize_path(path: str) -> str:
    parts = [p for p in PurePosixPath(path.strip("/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"manifests path {path!r} must stay inside the repository (no '..')")
    return "/".join(parts)


def mirror_name(display_url: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", display_url).strip("-.")[-40:].strip("-.")
    digest = hashlib.sha256(display_url.encode()).hexdigest()[:16]
    return f"{slug or 'repo'}-{digest}.git"


def _ssh_option(name: str, value: str) -> str:
    return f'{name}="{value}"' if any(c.isspace() for c in value) else f"{name}={value}"


def environment(
    remote: Remote, credentials: GitCredentials, *, timeout: float
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment of network git commands, and the secret strings in it."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",  # an empty value makes git skip core.askPass and SSH_ASKPASS
        "SSH_ASKPASS": "",
        "SSH_ASKPASS_REQUIRE": "never",
        "GCM_INTERACTIVE": "never",
    }
    secrets: list[str] = []
    if remote.transport == "http":
        token = credentials.token
        username = credentials.username
        if token is None and remote.url_password is not None:
            token, username = remote.url_password, username or remote.url_username
        elif token is None and remote.url_username is not None:
            token = remote.url_username  # https://<token>@host/...
        elif token is not None:
            username = username or remote.url_username
        if token:
            pair = f"{username or 'x-access-token'}:{token}"
            encoded = base64.b64encode(pair.encode()).decode()
            index = int(os.environ.get("GIT_CONFIG_COUNT", "0") or "0")
            env["GIT_CONFIG_COUNT"] = str(index + 1)
            env[f"GIT_CONFIG_KEY_{index}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{index}"] = f"Authorization: Basic {encoded}"
            secrets += [token, encoded]
        if remote.url_password:
            secrets.append(remote.url_password)
    elif remote.transport == "ssh":
        command = ["ssh"]
        if credentials.ssh_key_file is not None:
            command += ["-i", str(credentials.ssh_key_file), "-o", "IdentitiesOnly=yes"]
        if credentials.known_hosts_file is not None:
            command += ["-o", _ssh_option("UserKnownHostsFile", str(credentials.known_hosts_file))]
        elif not credentials.strict_host_key_checking:
            command += ["-o", "UserKnownHostsFile=/dev/null"]
        strict = "yes" if credentials.strict_host_key_checking else "no"
        command += [
            "-o",
            f"StrictHostKeyChecking={strict}",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, math.ceil(timeout))}",
        ]
        env["GIT_SSH_COMMAND"] = " ".join(shlex.quote(part) for part in command)
    return env, tuple(s for s in secrets if s)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    kind: Literal["auth", "ref", "unreachable"]
    advice: str  # formatted with url, host, branch


def _rule(pattern: str, kind: Literal["auth", "ref", "unreachable"], advice: str) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), kind, advice)


# The first rule matching a line of git's stderr decides; messages are LC_ALL=C English.
RULES = (
    _rule(
        r"host key verification failed|remote host identification has changed"
        r"|host key is known|host key for .* has changed",
        "auth",
        "the SSH host key of {host} was not accepted (unknown or changed); "
        "check that the known_hosts file holds the server's current host key",
    ),
    _rule(
        r"permission denied \(|too many authentication failures|load key|invalid format"
        r"|identity file .* not accessible",
        "auth",
        "SSH authentication to {host} was refused; check the SSH key and that the server "
        "accepts it for this user",
    ),
    _rule(  # git daemon: "access denied or repository not exported" is no credentials matter
        r"no such repository|repository not exported",
        "unreachable",
        "there is no git repository at {url} (or the server does not export it); check the URL",
    ),
    _rule(
        r"authentication failed|could not read (username|password)|terminal prompts disabled"
        r"|returned error: 40[13]|access denied|invalid username or password|http basic",
        "auth",
        "{url} refused the credentials; check the token (and username) and its access "
        "to the repository",
    ),
    _rule(
        r"couldn't find remote ref",
        "ref",
        "branch '{branch}' does not exist on {url}; check the branch name or push it",
    ),
    _rule(
        r"could not resolve host|name or service not known|temporary failure in name resolution"
        r"|nodename nor servname",
        "unreachable",
        "the host of {url} could not be resolved; check the host name and DNS",
    ),
    _rule(
        r"connection refused|failed to connect|couldn't connect|no route to host"
        r"|network is unreachable|timed out|connection reset|connection closed",
        "unreachable",
        "{url} could not be reached; check the host, the port and the network path to it",
    ),
    _rule(
        r"does not appear to be a git repository|repository not found|not a git repository"
        r"|returned error: 404|no such file or directory|not found",
        "unreachable",
        "there is no git repository at {url}; check the URL (and, for a private repository, "
        "the credentials)",
    ),
)

BOILERPLATE = re.compile(
    r"^(hint:|please make sure you have the correct access rights|and the repository exists"
    r"|fatal: could not read from remote repository)",
    re.IGNORECASE,
)


class GitSource:
    """A ``Source`` over one branch of a git remote (see the module docstring).

    Safe to share between threads: calls are serialized by a lock, because
    the persistent ``git cat-file`` streams must not interleave.
    """

    def __init__(
        self,
        url: str,
        *,
        branch: str = "main",
        path: str = "",
        cache_dir: Path,
        credentials: GitCredentials = GitCredentials(),
        timeout_seconds: float = 60.0,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self._recorder = recorder
        self._remote = parse_remote(url)
        check_branch(branch)
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._branch = branch
        self._path = _normalize_path(path)
        self._cache_dir = Path(cache_dir)
        self._mirror_dir = self._cache_dir / mirror_name(self._remote.display_url)
        self._timeout = timeout_seconds
        self._network_env, self._secrets = environment(
            self._remote, credentials, timeout=timeout_seconds
        )
        self._repo: Repo | None = None
        self._lock = threading.RLock()
        self.fetch_count = 0
        self.remote_lookups = 0
        self._tree_cache: dict[bytes, dict[str, tuple[int, bytes]]] = {}

    @property
    def display_url(self) -> str:
        return self._remote.display_url

    @property
    def mirror_dir(self) -> Path:
        """Where the bare mirror lives (under cache_dir)."""
        return self._mirror_dir

    # -- the Source protocol ------------------------------------------------

    def latest_revision(self) -> Revision:
        ref = f"refs/heads/{self._branch}"
        with self._lock:
            self.remote_lookups += 1
            out = self._run_network("ls-remote", "--", self._remote.git_url, ref)
        for line in out.decode("utf-8", "replace").splitlines():
            commit_id, _, name = line.partition("\t")
            if name == ref and OBJECT_ID.match(commit_id):
                return Revision(commit_id)
        raise SourceRefError(
            f"branch '{self._branch}' does not exist on {self.display_url}; "
            "check the branch name or push it"
        )

    def snapshot(self, revision: Revision) -> Snapshot:
        with self._lock:
            raw = self._ensure_commit(revision)
            commit = _parse_commit(revision, raw)
            if len(self._tree_cache) > TREE_CACHE_LIMIT:
                self._tree_cache.clear()
            walk = _TreeWalk(
                self._read_object, revision=revision, root=commit.tree, trees=self._tree_cache
            )
            files, problems = walk.list_files(self._path)
            return Snapshot(revision, files, tuple(sorted(problems)), commit.info)

    def read_blobs(self, blob_ids: Collection[str]) -> dict[str, bytes]:
        with self._lock:
            blobs: dict[str, bytes] = {}
            for blob_id in blob_ids:
                if not OBJECT_ID.match(blob_id):
                    raise SourceCacheError(f"{blob_id!r} is not a git blob id")
                if blob_id not in blobs:
                    blobs[blob_id] = self._read_object(bytes.fromhex(blob_id), "blob")
            return blobs

    def commits_between(self, old: Revision | None, new: Revision) -> list[CommitInfo]:
        with self._lock:
            newest = _parse_commit(new, self._ensure_commit(new)).info
            if old is None or not OBJECT_ID.match(old) or self._object_type(old) != "commit":
                return [newest]
            status, _ = self._run_local("merge-base", "--is-ancestor", old, new, ok=(0, 1))
            if status == 1:  # not an ancestor: the branch was force-pushed
                return [newest]
            _, out = self._run_local("rev-list", f"{old}..{new}")
            ids = out.decode("ascii", "replace").split()
            return [_parse_commit(Revision(i), self._read_commit(i)).info for i in ids]

    def check_commit(self, revision: Revision, allowed_signers: Path) -> CommitCheck:
        """``git verify-commit`` against the allowed-signers file, and the changed paths."""
        with self._lock:
            self._ensure_commit(revision)
            repo = self._open_mirror()
            status, _, err = self._execute(
                repo.git,
                [
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    f"gpg.ssh.allowedSignersFile={allowed_signers}",
                    "verify-commit",
                    "--raw",
                    revision,
                ],
                env=None,
            )
            _, out = self._run_local(
                "diff-tree",
                "-r",
                "--name-only",
                "--no-commit-id",
                "--root",
                "-m",
                "--first-parent",
                revision,
            )
        good = _GOOD_SIGNATURE.search(err)
        detail = " ".join(err.split()) or "no signature"
        prefix = f"{self._path}/" if self._path else ""
        paths = sorted(
            {
                line[len(prefix) :]
                for line in out.decode("utf-8", "replace").splitlines()
                if line and line.startswith(prefix)
            }
        )
        return CommitCheck(
            revision=revision,
            signed=status == 0 and good is not None,
            principal=good.group(1) if status == 0 and good is not None else None,
            detail=detail,
            paths=tuple(paths),
        )

    def close(self) -> None:
        """End the persistent ``git cat-file`` processes (they restart when needed)."""
        with self._lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None

    def __enter__(self) -> GitSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the mirror -----------------------------------------------------------

    def _open_mirror(self) -> Repo:
        if self._repo is not None:
            return self._repo
        try:
            if not (self._mirror_dir / "HEAD").is_file():
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                status, _, err = self._execute(
                    Git(str(self._cache_dir)),
                    ["init", "--bare", "--quiet", "--", str(self._mirror_dir)],
                    env=None,
                )
                if status != 0:
                    raise SourceCacheError(
                        f"git init of the cache at {self._mirror_dir} failed "
                        f"({self._detail(err)}); check that cache_dir is writable"
                    )
            self._repo = Repo(str(self._mirror_dir))
        except (OSError, GitError) as exc:
            raise SourceCacheError(
                f"the git cache at {self._mirror_dir} cannot be created or opened "
                f"({type(exc).__name__}: {self._scrub(str(exc))}); check that cache_dir is "
                "writable, or delete that directory if it is corrupt"
            ) from exc
        return self._repo

    def _ensure_commit(self, revision: Revision) -> bytes:
        """The raw commit object, fetching the branch first when it is not here."""
        if not OBJECT_ID.match(revision):
            raise SourceRefError(f"{revision!r} is not a git commit id (40 hex digits)")
        kind = self._object_type(revision)
        if kind is None:
            self._fetch()
            kind = self._object_type(revision)
        if kind is None:
            raise SourceUnreachableError(
                f"revision {revision[:12]} is no longer on branch '{self._branch}' of "
                f"{self.display_url} (was the branch force-pushed?); check the branch's "
                "latest revision and read that one"
            )
        if kind != "commit":
            raise SourceRefError(f"revision {revision[:12]} is a {kind}, not a commit")
        return self._read_commit(revision)

    def _read_commit(self, commit_id: str) -> bytes:
        return self._read_object(bytes.fromhex(commit_id), "commit")

    def _fetch(self) -> None:
        self.fetch_count += 1
        refspec = f"+refs/heads/{self._branch}:refs/heads/{self._branch}"
        started = time.monotonic()
        try:
            self._run_network(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--",
                self._remote.git_url,
                refspec,
            )
        finally:
            self._recorder.observe("git_fetch_duration_seconds", time.monotonic() - started)

    def _object_type(self, object_id: str) -> str | None:
        """The object's type in the mirror, None when it is not there."""
        repo = self._open_mirror()
        try:
            info = repo.odb.info(bytes.fromhex(object_id))
        except ValueError as exc:
            if "could not be resolved" in str(exc):
                return None
            raise self._cat_file_broken(exc) from exc
        except (OSError, GitError) as exc:
            raise self._cat_file_broken(exc) from exc
        return _text(info.type)

    def _read_object(self, binsha: bytes, expected: str) -> bytes:
        repo = self._open_mirror()
        try:
            stream = repo.odb.stream(binsha)
            data = stream.read()
        except ValueError as exc:
            if "could not be resolved" in str(exc):
                raise SourceCacheError(
                    f"{expected} {binsha.hex()} is not in the git cache at {self._mirror_dir}; "
                    "take a new snapshot before reading its blobs"
                ) from exc
            raise self._cat_file_broken(exc) from exc
        except (OSError, GitError) as exc:
            raise self._cat_file_broken(exc) from exc
        kind = _text(stream.type)
        if kind != expected:
            raise SourceCacheError(f"object {binsha.hex()} is a {kind}, not a {expected}")
        if not isinstance(data, bytes):
            raise SourceCacheError(f"object {binsha.hex()} could not be read as bytes")
        return data

    def _cat_file_broken(self, exc: Exception) -> SourceCacheError:
        if self._repo is not None:
            self._repo.git.clear_cache()  # the stream may be out of step: restart it next time
        return SourceCacheError(
            f"reading the git cache at {self._mirror_dir} failed "
            f"({type(exc).__name__}: {self._scrub(str(exc))}); it is retried with a new "
            "git cat-file process, delete that directory if this persists"
        )

    # -- running git ----------------------------------------------------------

    def _run_network(self, *args: str) -> bytes:
        repo = self._open_mirror()
        status, out, err = self._execute(repo.git, list(args), env=self._network_env)
        if status != 0:
            self._recorder.count("git_errors_total", operation=args[0])
            raise self._network_error(args[0], status, err)
        return out

    def _run_local(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, bytes]:
        repo = self._open_mirror()
        status, out, err = self._execute(repo.git, list(args), env=None)
        if status not in ok:
            detail = self._detail(err)
            if _timed_out(err):
                raise TransientError(
                    f"git {args[0]} in the cache at {self._mirror_dir} did not finish within "
                    f"{self._timeout:g} seconds; check the disk and the load of the machine"
                )
            raise SourceCacheError(
                f"git {args[0]} failed in the cache at {self._mirror_dir} ({detail}); "
                "delete that directory if it is corrupt"
            )
        return status, out

    def _execute(
        self, git: Git, args: list[str], *, env: Mapping[str, str] | None
    ) -> tuple[int, bytes, str]:
        command = [Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args]
        try:
            result = git.execute(
                command,
                with_extended_output=True,
                with_exceptions=False,
                stdout_as_string=False,
                kill_after_timeout=self._timeout,
                env=env,
            )
        except (OSError, GitError) as exc:
            raise SourceCacheError(
                f"git could not be run ({type(exc).__name__}: {self._scrub(str(exc))}); "
                "check that git is installed and on PATH"
            ) from exc
        if not isinstance(result, tuple):
            raise SourceCacheError(f"git {args[0]} returned no status")
        status, out, err = result
        out_bytes = out if isinstance(out, bytes) else str(out or "").encode()
        return int(status), out_bytes, str(err or "")

    def _network_error(self, command: str, status: int, stderr: str) -> Exception:
        host = host_of(self._remote)
        values = {"url": self.display_url, "host": host, "branch": self._branch}
        if _timed_out(stderr):
            return SourceUnreachableError(
                f"git {command} from {self.display_url} did not finish within "
                f"{self._timeout:g} seconds; check the network path to {host} "
                "or raise the timeout"
            )
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        for rule in RULES:
            for line in lines:
                if rule.pattern.search(line):
                    message = f"{rule.advice.format(**values)} (git: {self._detail(line)})"
                    if rule.kind == "auth":
                        return SourceAuthError(message)
                    if rule.kind == "ref":
                        return SourceRefError(message)
                    return SourceUnreachableError(message)
        return SourceUnreachableError(
            f"git {command} from {self.display_url} failed with status {status}; "
            f"check the URL, the credentials and the network (git: {self._detail(stderr)})"
        )

    def _detail(self, stderr: str) -> str:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        useful = [line for line in lines if not BOILERPLATE.match(line)] or lines
        text = useful[0] if useful else "no message"
        text = re.sub(r"^(fatal|error): ", "", text)
        text = self._scrub(text)
        return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return re.sub(r"(\w+://)[^/@\s]*:[^/@\s]*@", r"\1", text)


@dataclass(frozen=True)
class _Commit:
    tree: bytes
    info: CommitInfo


def _parse_commit(revision: Revision, raw: bytes) -> _Commit:
    header, _, body = raw.partition(b"\n\n")
    fields: dict[bytes, bytes] = {}
    for line in header.split(b"\n"):
        if line.startswith(b" "):
            continue  # a continuation line (gpgsig, mergetag)
        key, _, value = line.partition(b" ")
        fields.setdefault(key, value)
    encoding = fields.get(b"encoding", b"utf-8").decode("ascii", "replace")
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    try:
        tree = bytes.fromhex(fields[b"tree"].decode("ascii"))
        author, _ = _ident(fields[b"author"], encoding)
        _, committed_at = _ident(fields[b"committer"], encoding)
    except (KeyError, ValueError, OverflowError, OSError) as exc:
        raise SourceCacheError(
            f"commit {revision[:12]} cannot be parsed ({type(exc).__name__}: {exc})"
        ) from exc
    message = body.decode(encoding, "replace").rstrip("\n")
    return _Commit(tree, CommitInfo(revision, author, message, committed_at))


def _ident(value: bytes, encoding: str) -> tuple[str, datetime]:
    """``Name <email> 1700000000 +0100`` -> ("Name <email>", aware UTC time)."""
    text = value.decode(encoding, "replace")
    who, seconds, _zone = text.rsplit(" ", 2)
    return who, datetime.fromtimestamp(int(seconds), tz=UTC)


TREE_CACHE_LIMIT = 50_000  # parsed trees kept between snapshots


class _TreeWalk:
    """Lists a commit's files below a path, resolving symlinks inside the commit."""

    def __init__(
        self,
        read_object: ObjectReader,
        *,
        revision: Revision,
        root: bytes,
        trees: dict[bytes, dict[str, tuple[int, bytes]]] | None = None,
    ) -> None:
        self._read = read_object
        self._revision = revision
        self._root = root
        # Trees are immutable by id: a cache shared across snapshots means a one-file
        # change re-reads only the trees on that file's path.
        self._trees: dict[bytes, dict[str, tuple[int, bytes]]] = {} if trees is None else trees

    def list_files(self, path: str) -> tuple[dict[str, str], list[Problem]]:
        root = self._root
        parts = path.split("/") if path else []
        tree = root
        for depth, part in enumerate(parts):
            entry = self._entries(tree).get(part)
            if entry is None or entry[0] & _MODE_TYPE != _MODE_TREE:
                shown = "/".join(parts[: depth + 1])
                what = "does not exist" if entry is None else "is not a directory"
                return {}, [
                    Problem(
                        path,
                        None,
                        None,
                        "",
                        f"the manifests path '{path}' {what} in revision {self._revision[:12]} "
                        f"('{shown}' {what}); nothing is read from it, check the path setting",
                    )
                ]
            tree = entry[1]
        files: dict[str, str] = {}
        problems: list[Problem] = []
        for rel, full, mode, binsha in self._walk(tree, (), tuple(parts)):
            kind = mode & _MODE_TYPE
            if kind == _MODE_FILE:
                files[rel] = binsha.hex()
            elif kind == _MODE_LINK:
                target = self._read(binsha, "blob").decode("utf-8", "surrogateescape")
                found, message = self._resolve(full[:-1], target)
                if found is not None:
                    files[rel] = found.hex()
                else:
                    problems.append(Problem(rel, None, None, "", message))
            elif kind == _MODE_GITLINK:
                problems.append(
                    Problem(
                        rel,
                        None,
                        None,
                        "",
                        f"is a submodule (commit {binsha.hex()[:12]}); submodules are not read",
                    )
                )
            else:
                problems.append(
                    Problem(rel, None, None, "", f"has an unknown git file mode {mode:o}; not read")
                )
        return dict(sorted(files.items())), problems

    def _walk(
        self, tree: bytes, rel: tuple[str, ...], full: tuple[str, ...]
    ) -> Iterator[tuple[str, tuple[str, ...], int, bytes]]:
        for name, (mode, binsha) in sorted(self._entries(tree).items()):
            if mode & _MODE_TYPE == _MODE_TREE:
                yield from self._walk(binsha, (*rel, name), (*full, name))
            else:
                yield "/".join((*rel, name)), (*full, name), mode, binsha

    def _resolve(self, directory: tuple[str, ...], target: str) -> tuple[bytes | None, str]:
        """(blob id, "") for a link leading to a regular file, else (None, why not)."""
        quoted = f"symlink to '{target}'"
        current = list(directory)
        pending = target.split("/")
        hops = 0
        if target.startswith("/"):
            return None, f"{quoted} leads outside the repository; it is not read"
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return None, f"{quoted} leads outside the repository; it is not read"
                current.pop()
                continue
            entry = self._entries(self._tree_at(current)).get(part)
            if entry is None:
                return None, f"{quoted} leads to a file that does not exist; it is not read"
            mode, binsha = entry
            kind = mode & _MODE_TYPE
            if kind == _MODE_LINK:
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    return None, f"{quoted} loops (too many levels of symlinks); it is not read"
                inner = self._read(binsha, "blob").decode("utf-8", "surrogateescape")
                if inner.startswith("/"):
                    return None, f"{quoted} leads outside the repository; it is not read"
                pending = inner.split("/") + pending
            elif kind == _MODE_TREE:
                current.append(part)
            elif kind == _MODE_GITLINK:
                return None, f"{quoted} leads into a submodule; submodules are not read"
            elif pending:  # "file/..." or "file/": a file is not a directory
                return None, f"{quoted} leads to a file that does not exist; it is not read"
            else:
                return binsha, ""
        return None, f"{quoted} leads to a directory, which is not followed; it is not read"

    def _tree_at(self, parts: list[str]) -> bytes:
        tree = self._root
        for part in parts:  # every part was seen to be a tree on the way here
            tree = self._entries(tree)[part][1]
        return tree

    def _entries(self, tree: bytes) -> dict[str, tuple[int, bytes]]:
        cached = self._trees.get(tree)
        if cached is not None:
            return cached
        data = self._read(tree, "tree")
        entries: dict[str, tuple[int, bytes]] = {}
        at = 0
        try:
            while at < len(data):
                space = data.index(b" ", at)
                nul = data.index(b"\0", space)
                mode = int(data[at:space], 8)
                name = data[space + 1 : nul].decode("utf-8", "surrogateescape")
                entries[name] = (mode, data[nul + 1 : nul + 21])
                at = nul + 21
        except ValueError as exc:
            raise SourceCacheError(f"tree {tree.hex()} cannot be parsed ({exc})") from exc
        self._trees[tree] = entries
        return entries


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _timed_out(stderr: str) -> bool:
    return stderr.startswith("Timeout: the command") or "process killed because it timed out" in (
        stderr
    )


def host_of(remote: Remote) -> str:
    if remote.transport == "file":
        return "the local file system"
    if "://" in remote.git_url:
        netloc = urlsplit(remote.git_url).netloc
        return netloc.rpartition("@")[2] or remote.display_url
    return remote.git_url.split(":", 1)[0].rpartition("@")[2]


class RepositoryReader(GitSource):
    """Any revision of a local repository, read in place: for ``plan`` in CI checkouts.

    It reads the repository's own object database (no mirror, no fetch), so
    a pull request's head, ``origin/main`` or a tag all work as revisions.
    """

    def __init__(self, repository: Path, *, path: str = "") -> None:
        git_dir = _absolute_git_dir(repository)
        super().__init__(str(repository.resolve()), path=path, cache_dir=git_dir.parent)
        self._mirror_dir = git_dir

    def resolve(self, revision: str) -> Revision:
        """The commit id a revision name (branch, tag, ``HEAD~1``, id) points to."""
        if revision.startswith("-"):
            raise SourceRefError(f"{revision!r} is not a revision name")
        with self._lock:
            status, out = self._run_local(
                "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", ok=(0, 1)
            )
        if status != 0:
            raise SourceRefError(
                f"revision {revision!r} is not in {self.display_url}; fetch it first "
                "(in CI: a checkout with fetch-depth 0)"
            )
        return Revision(out.decode("ascii").strip())

    def _fetch(self) -> None:
        raise SourceRefError(f"the revision is not in the repository {self.display_url}")


def _absolute_git_dir(repository: Path) -> Path:
    try:
        out = Git(str(repository)).execute(
            ["git", "rev-parse", "--absolute-git-dir"], with_extended_output=False
        )
    except (OSError, GitError) as exc:
        raise SourceRefError(f"{repository} is not a git repository") from exc
    return Path(str(out).strip())
