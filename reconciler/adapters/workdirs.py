"""Reading manifests from a directory on disk (a checkout or a working tree).

Used by ``validate`` and the ``--watch`` dev mode. Paths are reported
relative to the directory holding ``.reconciler.yaml``; a symlink is read
only when it resolves inside that directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.problems import Problem
from reconciler.core.repoconfigs import CONFIG_FILE, RepoConfig


def find_config_root(path: Path) -> Path:
    """The nearest directory at or above path holding .reconciler.yaml.

    The search stops at a git repository's top (a directory with ``.git``);
    without a config file the starting directory is the root.
    """
    start = path if path.is_dir() else path.parent
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / CONFIG_FILE).is_file():
            return directory
        if (directory / ".git").exists():
            break
    return start


def read_config_bytes(root: Path) -> bytes | None:
    config = root / CONFIG_FILE
    return config.read_bytes() if config.is_file() else None


@dataclass(frozen=True)
class TreeRead:
    files: dict[str, bytes]
    errors: tuple[Problem, ...]


def read_manifests(
    root: Path, config: RepoConfig, *, only: Iterable[Path] | None = None
) -> TreeRead:
    """Manifest files under root (or just ``only``), as repo-relative path -> bytes."""
    root = root.resolve()
    files: dict[str, bytes] = {}
    errors: list[Problem] = []
    candidates = list_manifests(root, config) if only is None else [Path(p) for p in only]
    for candidate in candidates:
        absolute = candidate if candidate.is_absolute() else Path.cwd() / candidate
        relpath = os.path.relpath(absolute, root).replace(os.sep, "/")
        if relpath == CONFIG_FILE:
            continue
        resolved = absolute.resolve()
        if not resolved.is_relative_to(root):
            errors.append(
                Problem(
                    relpath,
                    None,
                    None,
                    "",
                    "path leads outside the repository (symlink?); manifests must live inside it",
                )
            )
            continue
        try:
            files[relpath] = resolved.read_bytes()
        except OSError as exc:
            errors.append(Problem(relpath, None, None, "", f"cannot read file: {exc.strerror}"))
    return TreeRead(files, tuple(errors))


def list_manifests(root: Path, config: RepoConfig, *, under: Path | None = None) -> list[Path]:
    """Manifest files below ``under`` (default: root), as the config selects them."""
    root = root.resolve()
    return list(_walk(root, config, (under or root).resolve()))


def _walk(root: Path, config: RepoConfig, start: Path) -> Iterable[Path]:
    for directory, subdirs, names in os.walk(start):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            relpath = path.relative_to(root).as_posix()
            if config.is_manifest_path(relpath):
                yield path
