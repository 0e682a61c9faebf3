"""The local backend's secret store: one JSON file per secret, readable by us alone.

Workflows name secrets by id (``use.projection.secrets[].id``); on Kubernetes
those are Secret objects, on the local backend they live here, under
``<state dir>/secrets``, written by ``reconciler secret set ID KEY=VALUE``.
The directory is 0700 and every file 0600 from the moment it exists (created
with ``os.open(..., 0o600)``, then renamed into place, so a reader never sees
half a file). A file that group or others could read is refused rather than
used: a secret that leaked on disk should be noticed, not quietly projected.
Ids are RFC 1123 labels and keys a small alphabet, so neither can name a path
outside the directory. Nothing here puts a value in a message or a repr.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from reconciler.core.names import check_label
from reconciler.ports import TerminalError

SECRETS_DIR = "secrets"
_KEY = re.compile(r"^[-._A-Za-z0-9]+$")
_LOCK_FILE = ".lock"


class SecretNotFound(TerminalError):  # noqa: N818 (named for what it means, like FileNotFound)
    """No secret with that id in the store."""


class SecretStore:
    """Secrets by id, as files under ``state_dir/secrets``."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / SECRETS_DIR
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(self._dir.stat().st_mode) != 0o700:
                self._dir.chmod(0o700)
        except OSError as error:
            raise TerminalError(
                f"cannot prepare the secret directory {self._dir}: {error.strerror}"
            ) from error

    def __repr__(self) -> str:
        return f"SecretStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    def set(self, secret_id: str, values: Mapping[str, str]) -> None:
        """Create the secret or merge values into it (given keys replace old ones)."""
        path = self._path(secret_id)
        if not values:
            raise ValueError(f"give secret {secret_id!r} at least one KEY=VALUE")
        for key, value in values.items():
            _check_key(key)
            if not isinstance(value, str):
                raise ValueError(f"the value of key {key!r} must be a string")
        with self._locked():
            current = self._read(secret_id, path) if path.exists() else {}
            self._write(path, {**current, **values})

    def unset(self, secret_id: str, keys: Sequence[str]) -> None:
        """Remove keys from the secret; every key must be there (nothing changes if not)."""
        path = self._path(secret_id)
        for key in keys:
            _check_key(key)
        with self._locked():
            current = self._read(secret_id, path)
            missing = sorted(set(keys) - current.keys())
            if missing:
                raise ValueError(
                    f"secret {secret_id!r} has no key(s) {', '.join(missing)}; "
                    f"its keys are: {', '.join(sorted(current)) or '(none)'}"
                )
            self._write(path, {k: v for k, v in current.items() if k not in keys})

    def delete(self, secret_id: str) -> None:
        path = self._path(secret_id)
        with self._locked():
            try:
                path.unlink()
            except FileNotFoundError as error:
                raise self._not_found(secret_id) from error
            except OSError as error:
                raise TerminalError(f"cannot delete secret {secret_id!r}: {error}") from error
            _sync_directory(self._dir)

    def get(self, secret_id: str) -> dict[str, str]:
        return self._read(secret_id, self._path(secret_id))

    def exists(self, secret_id: str) -> bool:
        return self._path(secret_id).is_file()

    def list(self) -> dict[str, list[str]]:
        """Each secret id with its sorted key names (never the values)."""
        found: dict[str, list[str]] = {}
        for entry in sorted(self._dir.glob("*.json")):
            secret_id = entry.name.removesuffix(".json")
            if check_label(secret_id) is None:
                found[secret_id] = sorted(self._read(secret_id, entry))
        return found

    def stamp(self) -> object:
        """Changes whenever a secret is set, unset or deleted (every write replaces a file by
        renaming a new one over it): for readers that cache the values."""
        try:
            entries = sorted((entry.name, entry.inode()) for entry in os.scandir(self._dir))
            return (self._dir.stat().st_mtime_ns, tuple(entries))
        except OSError:
            return None

    def _path(self, secret_id: str) -> Path:
        problem = check_label(secret_id, what="secret id")
        if problem is not None:
            raise ValueError(problem)
        return self._dir / f"{secret_id}.json"

    def _not_found(self, secret_id: str) -> SecretNotFound:
        return SecretNotFound(
            f"secret {secret_id!r} not found in {self._dir}: create it with "
            f"`reconciler secret set {secret_id} KEY=VALUE`"
        )

    def _read(self, secret_id: str, path: Path) -> dict[str, str]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as error:
            raise self._not_found(secret_id) from error
        except OSError as error:
            raise TerminalError(f"cannot read secret file {path}: {error.strerror}") from error
        with os.fdopen(fd, "rb") as file:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise TerminalError(
                    f"secret file {path} is readable or writable by group or others "
                    f"(mode {mode:04o}); refusing to use it: run chmod 600 {path}"
                )
            raw = file.read()
        try:
            data = json.loads(raw)
        except ValueError as error:  # the message names a position, never the content
            raise TerminalError(
                f"secret file {path} is not valid JSON ({error}): set the secret again "
                f"with `reconciler secret set {secret_id} KEY=VALUE`"
            ) from error
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise TerminalError(
                f"secret file {path} must hold a JSON object of string keys and values"
            )
        return data

    def _write(self, path: Path, values: Mapping[str, str]) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(json.dumps(dict(values), indent=2, sort_keys=True).encode())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            _sync_directory(self._dir)
        except OSError as error:
            raise TerminalError(f"cannot write secret file {path}: {error.strerror}") from error

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (the CLI and the daemon may both change secrets)."""
        try:
            fd = os.open(self._dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise TerminalError(f"cannot lock the secret store: {error.strerror}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"secret key {key!r} may hold only letters, digits, '-', '_' and '.'")


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
