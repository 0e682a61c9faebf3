"""Run status reports, committed to a git branch of their own.

Reviewers and dashboards read run reports from git, yet the reconciler must
never read them back as desired state nor disturb the manifests: so they
live on a separate orphan branch (default ``status``), written through a
private bare repository under the cache directory. There is no working tree
and the source's mirror is never touched. A batch of file writes becomes one
commit built with plumbing (all blobs in one ``git fast-import``, a
throwaway index, ``commit-tree``) and is pushed without force. Several
writers (replicas, a restarted daemon) may race; each writes its own
deterministic files, so a rejected push is settled by fetching the new tip
and re-applying the same writes on top of it, after a jittered backoff.
Retention (``prune``) and squashing keep the branch small. Credentials
reach git through the environment only, and failures are classified (and
scrubbed of secrets) with the git source's rules.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

from reconciler.adapters.gitsource import (
    BOILERPLATE,
    DETAIL_LIMIT,
    OBJECT_ID,
    RULES,
    GitCredentials,
    check_branch,
    environment,
    host_of,
    mirror_name,
    parse_remote,
)
from reconciler.core.backoffs import Backoff
from reconciler.ports import (
    NULL_RECORDER,
    ReconcilerError,
    Recorder,
    TerminalError,
    TransientError,
)


class StatusConfigError(TerminalError):
    """The status writer's settings cannot work (branch names, signing key, limits)."""


class StatusAuthError(TransientError):
    """The remote refused the credentials (or their right to push), or its SSH host key."""


class StatusUnreachableError(TransientError):
    """The status remote could not be reached, or did not answer in time."""


class StatusConflictError(TransientError):
    """Every push attempt lost the race against another writer; the batch is kept."""


class StatusRejectedError(TerminalError):
    """The remote refused the push for a reason a retry does not change (a hook, a protection)."""


class StatusCacheError(TerminalError):
    """The writer's own bare repository cannot be created or used."""


_NO_CREDENTIALS = GitCredentials()

Prune = Callable[[Mapping[str, str]], Iterable[str]]

_ZERO_ID = "0" * 40
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_FILE_MODE = "100644"
_BACKOFF_BASE_SECONDS = 0.2
_BACKOFF_CAP_SECONDS = 5.0
_BACKOFF_JITTER = 0.5  # each delay is spread over ±50% so racing writers fall out of step
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_PORCELAIN_SUMMARY = re.compile(r"^\[([^\]]*)\](?: \((.*)\))?")
# a [rejected] reason meaning "someone else pushed first": fetch, rebuild, retry
_RACE_REASONS = frozenset({"fetch first", "non-fast-forward", "stale info"})
# a [remote rejected] reason meaning the server lost a compare-and-swap of the ref
_REMOTE_RACE = re.compile(
    r"cannot lock ref|failed to update ref|but expected|reference already exists"
    r"|incorrect old value|failed to lock",
    re.IGNORECASE,
)
# push refusals that the git source's (read-only) rules do not know
_PUSH_DENIED = re.compile(
    r"permission to .* denied|not allowed to push|write access to repository not granted"
    r"|insufficient permission|you do not have permission",
    re.IGNORECASE,
)
# variables that would point git at another repository, index or identity
_INHERITED_GIT_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
)


@dataclass(frozen=True)
class _Built:
    commit: str
    squashed: bool


class StatusWriter:
    """Commits batches of files to the status branch of a remote (see the module docstring).

    Safe to share between threads: calls are serialized by a lock.
    """

    def __init__(
        self,
        url: str,
        *,
        branch: str = "status",
        source_branch: str,
        cache_dir: Path,
        credentials: GitCredentials = _NO_CREDENTIALS,
        author_name: str = "Workflow Reconciler",
        author_email: str = "reconciler@localhost",
        signing_key: Path | None = None,
        timeout_seconds: float = 60.0,
        max_attempts: int = 8,
        squash_depth: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self._recorder = recorder
        try:
            self._remote = parse_remote(url)
            check_branch(branch)
            check_branch(source_branch)
        except ValueError as exc:
            raise StatusConfigError(f"status writer: {exc}") from exc
        if branch == source_branch:
            raise StatusConfigError(
                f"the status branch must differ from the manifests branch ('{branch}'): "
                "status reports on the manifests branch would be read as desired state; "
                "set the status branch to another name, such as 'status'"
            )
        if timeout_seconds <= 0:
            raise StatusConfigError("status writer: timeout_seconds must be positive")
        if max_attempts < 1:
            raise StatusConfigError("status writer: max_attempts must be at least 1")
        if squash_depth is not None and squash_depth < 1:
            raise StatusConfigError("status writer: squash_depth must be at least 1 (or unset)")
        if signing_key is not None and not signing_key.is_file():
            raise StatusConfigError(
                f"the commit signing key {signing_key} does not exist; check the path "
                "(an SSH private key, or a public key whose private half is in ssh-agent)"
            )
        self._branch = branch
        self._ref = f"refs/heads/{branch}"
        self._repo_dir = Path(cache_dir) / f"status-{mirror_name(self._remote.display_url)}"
        self._signing_key = signing_key.resolve() if signing_key is not None else None
        self._timeout = timeout_seconds
        self._squash_depth = squash_depth
        self._backoff = Backoff(
            base=_BACKOFF_BASE_SECONDS,
            cap=_BACKOFF_CAP_SECONDS,
            jitter=_BACKOFF_JITTER,
            attempts=max_attempts,
        )
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._network_env, self._secrets = environment(
            self._remote, credentials, timeout=timeout_seconds
        )
        self._base_env = {
            key: value for key, value in os.environ.items() if key not in _INHERITED_GIT_VARIABLES
        }
        self._base_env.update({"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"})
        self._author_env = {
            "GIT_AUTHOR_NAME": author_name,
            "GIT_AUTHOR_EMAIL": author_email,
            "GIT_COMMITTER_NAME": author_name,
            "GIT_COMMITTER_EMAIL": author_email,
        }
        self._lock = threading.RLock()
        self.push_count = 0
        self.retry_count = 0

    @property
    def display_url(self) -> str:
        """The remote as people may see it: never with credentials."""
        return self._remote.display_url

    @property
    def branch(self) -> str:
        return self._branch

    @property
    def repo_dir(self) -> Path:
        """The writer's own bare repository (under cache_dir, apart from the source's mirror)."""
        return self._repo_dir

    # -- the status sink --------------------------------------------------------

    def push(
        self,
        writes: Mapping[str, bytes | None],
        *,
        message: str,
        prune: Prune | None = None,
    ) -> str:
        """Commit writes (path -> content; None deletes) on top of the remote branch and push.

        Returns the new commit id; when nothing changes (no writes, nothing
        pruned, or the same content), no commit is made and the current tip
        is returned ("" when the branch does not exist). ``prune`` receives
        the files of each attempt's base (writes applied) as {path: blob id}
        and returns more paths to delete. Raises ``StatusConflictError`` when
        every attempt lost a race, and other typed errors as classified.
        """
        for path in writes:
            _check_path(path)
        _check_no_file_directory_clash(writes)
        with self._lock:
            self._ensure_repo()
            blobs = self._write_blobs(writes)
            try:
                for attempt in range(self._backoff.attempts):
                    tip = self._fetch_tip()
                    built = self._build(tip, blobs, message=message, prune=prune)
                    if built is None:
                        self._recorder.count("status_pushes_total", result="unchanged")
                        return tip or ""
                    if self._push_commit(built.commit, lease=tip if built.squashed else None):
                        self._run_local("update-ref", self._ref, built.commit)
                        self.push_count += 1
                        self._recorder.count("status_pushes_total", result="pushed")
                        return built.commit
                    if not self._backoff.should_retry(attempt):
                        break
                    self.retry_count += 1
                    self._recorder.count("status_push_retries_total")
                    delay = self._backoff.delay(attempt, spread=self._rng.random())
                    self._sleep(min(_BACKOFF_CAP_SECONDS, delay))
            except ReconcilerError:
                self._recorder.count("status_pushes_total", result="failed")
                raise
        self._recorder.count("status_pushes_total", result="failed")
        raise StatusConflictError(
            f"pushing status to branch '{self._branch}' of {self.display_url} lost the race "
            f"against other writers {self._backoff.attempts} times in a row; the batch is kept "
            "and will be retried on the next pass"
        )

    def read(self, path: str) -> bytes | None:
        """A file's content at the remote tip (fetched first); None if absent or no branch."""
        _check_path(path)
        with self._lock:
            self._ensure_repo()
            tip = self._fetch_tip()
            if tip is None:
                return None
            _, out, _ = self._run_local("cat-file", "--batch", stdin=f"{tip}:{path}\n".encode())
        header, _, rest = out.partition(b"\n")
        fields = header.decode("utf-8", "replace").split(" ")
        if len(fields) != 3 or fields[1] != "blob":
            return None  # "<name> missing", or a directory
        return rest[: int(fields[2])]

    def list_files(self, prefix: str = "") -> dict[str, str]:
        """{path: blob id} of the files at the remote tip whose path starts with prefix."""
        with self._lock:
            self._ensure_repo()
            tip = self._fetch_tip()
            if tip is None:
                return {}
            files = self._tree_files(tip)
        return {path: blob for path, blob in files.items() if path.startswith(prefix)}

    def close(self) -> None:
        """Nothing persistent is held (every git call is a short process); kept for symmetry."""

    def __enter__(self) -> StatusWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- building a commit --------------------------------------------------------

    def _write_blobs(self, writes: Mapping[str, bytes | None]) -> dict[str, str | None]:
        """Store all contents with one ``git fast-import``: path -> blob id (None: delete)."""
        contents = [(path, data) for path, data in writes.items() if data is not None]
        blobs: dict[str, str | None] = {path: None for path, data in writes.items() if data is None}
        if not contents:
            return blobs
        chunks: list[bytes] = []
        for mark, (_, data) in enumerate(contents, start=1):
            chunks += [b"blob\nmark :%d\ndata %d\n" % (mark, len(data)), data, b"\n"]
        chunks.append(b"done\n")
        with tempfile.TemporaryDirectory(prefix="blobs-", dir=self._repo_dir) as scratch:
            marks_file = Path(scratch) / "marks"
            self._run_local(
                "fast-import",
                "--quiet",
                "--done",
                f"--export-marks={marks_file}",
                stdin=b"".join(chunks),
            )
            marks = dict(
                line.split(" ", 1) for line in marks_file.read_text("ascii").splitlines() if line
            )
        for mark, (path, _) in enumerate(contents, start=1):
            blob = marks.get(f":{mark}", "")
            if not OBJECT_ID.match(blob):
                raise StatusCacheError(
                    f"git fast-import in the status cache at {self._repo_dir} did not store "
                    f"the content of {path}; delete that directory if this persists"
                )
            blobs[path] = blob
        return blobs

    def _build(
        self, tip: str | None, blobs: Mapping[str, str | None], *, message: str, prune: Prune | None
    ) -> _Built | None:
        """The commit of blobs (and pruning) on top of tip; None when the tree would not change."""
        deletions: list[str] = []
        if prune is not None:
            files = self._tree_files(tip) if tip else {}
            _apply_writes(files, blobs)
            for path in prune(MappingProxyType(files)):
                if _check_path(path) in files:
                    deletions.append(path)
        if not blobs and not deletions:
            return None
        base_tree = _EMPTY_TREE
        if tip:
            base_tree = self._run_local("rev-parse", f"{tip}^{{tree}}")[1].decode().strip()
        records = bytearray()
        for path, blob in blobs.items():
            records += f"{_FILE_MODE} {blob}\t{path}\0".encode() if blob else _deletion(path)
        for path in deletions:
            records += _deletion(path)
        with tempfile.TemporaryDirectory(prefix="index-", dir=self._repo_dir) as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            if tip:
                self._run_local("read-tree", base_tree, env=index)
            self._run_local("update-index", "-z", "--index-info", stdin=bytes(records), env=index)
            tree = self._run_local("write-tree", env=index)[1].decode().strip()
        if tree == base_tree:
            return None
        squashed = tip is not None and self._history_full(tip)
        if squashed:
            message = (
                f"{message.rstrip()}\n\nHistory squashed: this orphan commit holds every file "
                "of the branch; the commits before it were dropped "
                f"(squash depth {self._squash_depth})."
            )
        parents = ["-p", tip] if tip and not squashed else []
        return _Built(self._commit_tree(tree, parents, message), squashed)

    def _commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        signing: list[str] = []
        sign = "--no-gpg-sign"
        if self._signing_key is not None:
            signing = ["-c", "gpg.format=ssh", "-c", f"user.signingKey={self._signing_key}"]
            sign = "-S"
        text = message if message.endswith("\n") else message + "\n"
        status, out, err = self._git(
            *signing,
            "commit-tree",
            *parents,
            sign,
            "-F",
            "-",
            tree,
            stdin=text.encode(),
            env=self._author_env,
        )
        commit = out.decode("ascii", "replace").strip()
        if status != 0 and self._signing_key is not None:
            raise StatusConfigError(
                f"signing the status commit with {self._signing_key} failed ({self._detail(err)}); "
                "check the key (no passphrase, or loaded in ssh-agent) and that ssh-keygen is "
                "installed"
            )
        if status != 0 or not OBJECT_ID.match(commit):
            raise self._cache_error("commit-tree", err)
        return commit

    def _history_full(self, tip: str) -> bool:
        """Whether one more commit on tip would make the history deeper than squash_depth."""
        if self._squash_depth is None:
            return False
        depth = self._squash_depth
        _, out, _ = self._run_local(
            "rev-list", "--first-parent", "--count", f"--max-count={depth}", tip
        )
        return int(out.decode().strip() or "0") >= depth

    def _tree_files(self, treeish: str) -> dict[str, str]:
        _, out, _ = self._run_local("ls-tree", "-r", "-z", "--full-tree", treeish)
        files: dict[str, str] = {}
        for record in out.split(b"\0"):
            meta, tab, raw_path = record.partition(b"\t")
            fields = meta.split(b" ")
            if tab and len(fields) == 3 and fields[1] == b"blob":
                files[raw_path.decode("utf-8", "surrogateescape")] = fields[2].decode("ascii")
        return files

    # -- talking to the remote -------------------------------------------------------

    def _fetch_tip(self) -> str | None:
        """Fetch the remote branch into the cache; its commit id, None when it does not exist."""
        status, _, err = self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--",
            self._remote.git_url,
            f"+{self._ref}:{self._ref}",
            network=True,
        )
        if status != 0:
            if "couldn't find remote ref" in err.lower():
                self._run_local("update-ref", "-d", self._ref)
                return None
            raise self._network_error("fetch", status, err)
        tip = self._run_local("rev-parse", "--verify", f"{self._ref}^{{commit}}")[1]
        return tip.decode("ascii", "replace").strip()

    def _push_commit(self, commit: str, *, lease: str | None) -> bool:
        """Push commit to the branch: True when done, False when another writer got there first."""
        force = [f"--force-with-lease={self._ref}:{lease}"] if lease else []
        status, out, err = self._git(
            "push",
            "--porcelain",
            "--no-verify",
            *force,
            "--",
            self._remote.git_url,
            f"{commit}:{self._ref}",
            network=True,
        )
        for line in out.decode("utf-8", "replace").splitlines():
            flag, _, rest = line.partition("\t")
            refs, _, summary = rest.partition("\t")
            if not refs.endswith(f":{self._ref}"):
                continue
            if flag != "!":
                if status == 0:
                    return True
                break
            match = _PORCELAIN_SUMMARY.match(summary)
            kind, reason = (match.group(1), match.group(2) or "") if match else (summary, "")
            if kind == "rejected" and reason in _RACE_REASONS:
                return False
            if kind == "remote rejected" and _REMOTE_RACE.search(reason):
                return False
            if kind == "remote rejected" and _PUSH_DENIED.search(reason):
                err = f"{reason}\n{err}"  # a refusal of the credentials, classified below
                break
            raise StatusRejectedError(
                f"{self.display_url} refused the push to branch '{self._branch}' "
                f"({kind}: {self._scrub(reason) or 'no reason given'}"
                f"{self._remote_says(err)}); a retry will not change that: check the "
                "server's hooks and branch protection for this branch"
            )
        raise self._network_error("push", status or 1, err)

    def _network_error(self, command: str, status: int, stderr: str) -> ReconcilerError:
        host = host_of(self._remote)
        values = {"url": self.display_url, "host": host, "branch": self._branch}
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        for line in lines if command == "push" else []:
            if _PUSH_DENIED.search(line):
                return StatusAuthError(
                    f"{self.display_url} does not let these credentials push to branch "
                    f"'{self._branch}'; give them write access (git {command}: "
                    f"{self._detail(line)})"
                )
        for rule in RULES:
            for line in lines:
                if rule.pattern.search(line):
                    message = (
                        f"{rule.advice.format(**values)} (git {command}: {self._detail(line)})"
                    )
                    if rule.kind == "auth":
                        return StatusAuthError(message)
                    return StatusUnreachableError(message)
        return StatusUnreachableError(
            f"git {command} of status branch '{self._branch}' at {self.display_url} failed "
            f"with status {status}; check the URL, the credentials and the network "
            f"(git: {self._detail(stderr)})"
        )

    # -- running git -------------------------------------------------------------------

    def _ensure_repo(self) -> None:
        if (self._repo_dir / "HEAD").is_file():
            return
        try:
            self._repo_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StatusCacheError(
                f"the status cache directory {self._repo_dir.parent} cannot be created "
                f"({type(exc).__name__}: {exc}); check that cache_dir is writable"
            ) from exc
        self._run_local("init", "--bare", "--quiet")

    def _run_local(
        self, *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, str]:
        status, out, err = self._git(*args, stdin=stdin, env=env)
        if status != 0:
            raise self._cache_error(args[0], err)
        return status, out, err

    def _git(
        self,
        *args: str,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        network: bool = False,
    ) -> tuple[int, bytes, str]:
        """Run git on the cache repository: (status, stdout, stderr).

        Raises only when git cannot be started, or does not finish in time.
        """
        full_env = dict(self._base_env)
        if network:
            full_env.update(self._network_env)
        full_env.update(env or {})
        command = ["git", f"--git-dir={self._repo_dir}", *args]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # a timeout ends ssh and helpers too, not only git
            )
        except OSError as exc:
            raise StatusCacheError(
                f"git could not be run ({type(exc).__name__}: {exc}); check that git is "
                "installed and on PATH"
            ) from exc
        with process:
            try:
                out, err = process.communicate(stdin, timeout=self._timeout)
            except subprocess.TimeoutExpired as exc:
                _kill_group(process)
                if network:
                    raise StatusUnreachableError(
                        f"git {_subcommand(args)} of status branch '{self._branch}' at "
                        f"{self.display_url} did not finish within {self._timeout:g} seconds; "
                        f"check the network path to {host_of(self._remote)} or raise the timeout"
                    ) from exc
                raise TransientError(
                    f"git {_subcommand(args)} in the status cache at {self._repo_dir} did not "
                    f"finish within {self._timeout:g} seconds; check the disk and the load of "
                    "the machine"
                ) from exc
            except BaseException:
                _kill_group(process)
                raise
        return process.returncode, out, err.decode("utf-8", "replace")

    def _cache_error(self, command: str, stderr: str) -> StatusCacheError:
        return StatusCacheError(
            f"git {command} failed in the status cache at {self._repo_dir} "
            f"({self._detail(stderr)}); delete that directory if it is corrupt"
        )

    def _remote_says(self, stderr: str) -> str:
        said = [line[len("remote:") :].strip() for line in stderr.splitlines()]
        said = [line for line in said if line and not line.startswith("error:")]
        return f"; the remote says: {self._detail(said[0])}" if said else ""

    def _detail(self, stderr: str) -> str:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        useful = [line for line in lines if not BOILERPLATE.match(line)] or lines
        text = useful[0] if useful else "no message"
        text = self._scrub(re.sub(r"^(fatal|error): ", "", text))
        return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return re.sub(r"(\w+://)[^/@\s]*:[^/@\s]*@", r"\1", text)


def _check_path(path: str) -> str:
    parts = path.split("/")
    if (
        not path
        or _BAD_PATH_CHAR.search(path)
        or any(part in ("", ".", "..") or part.lower() == ".git" for part in parts)
    ):
        raise ValueError(
            f"status file path {path!r} must be relative and plain ('dir/name'): no leading, "
            "trailing or double '/', no '.', '..' or '.git' parts, no control characters"
        )
    return path


def _ancestors(path: str) -> Iterable[str]:
    parts = path.split("/")
    return ("/".join(parts[:end]) for end in range(1, len(parts)))


def _check_no_file_directory_clash(writes: Mapping[str, bytes | None]) -> None:
    written = {path for path, data in writes.items() if data is not None}
    for path in written:
        for ancestor in _ancestors(path):
            if ancestor in written:
                raise ValueError(
                    f"status writes make {ancestor!r} both a file and the directory of "
                    f"{path!r}; write one of them only"
                )


def _apply_writes(files: dict[str, str], blobs: Mapping[str, str | None]) -> None:
    """Apply writes to a {path: blob id} listing as git's index does (a file replaces a dir)."""
    written = {path for path, blob in blobs.items() if blob is not None}
    directories = {ancestor for path in written for ancestor in _ancestors(path)}
    for path in list(files):
        if path in directories or any(a in written for a in _ancestors(path)):
            del files[path]
    for path, blob in blobs.items():
        if blob is None:
            files.pop(path, None)
        else:
            files[path] = blob


def _deletion(path: str) -> bytes:
    return f"0 {_ZERO_ID}\t{path}\0".encode()


def _subcommand(args: tuple[str, ...]) -> str:
    return next((arg for arg in args if not arg.startswith("-") and "=" not in arg), "")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
