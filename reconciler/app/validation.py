"""``reconciler validate``: check manifest files and directories the way the daemon would."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.adapters.workdirs import (
    find_config_root,
    list_manifests,
    read_config_bytes,
    read_manifests,
)
from reconciler.core.loading import load_manifest_set, load_repo_config
from reconciler.core.problems import Problem
from reconciler.core.repoconfigs import CONFIG_FILE
from reconciler.core.variables import merge_variables


@dataclass
class ValidationReport:
    files: int = 0
    workflows: int = 0
    errors: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, object]:
        return {
            "valid": self.valid,
            "files": self.files,
            "workflows": self.workflows,
            "errors": [p.as_dict() for p in self.errors],
            "notes": [p.as_dict() for p in self.notes],
        }


def validate_paths(paths: Sequence[Path], *, environ: Mapping[str, str]) -> ValidationReport:
    """Validate files and directories, grouped by the repo config that governs them.

    A directory means every manifest below it; a file is checked even when the
    config would not pick it up in a directory scan (it was named on purpose).
    """
    groups: dict[Path, list[Path]] = {}
    report = ValidationReport()
    for path in paths:
        if not path.exists():
            report.errors.append(Problem(str(path), None, None, "", "no such file or directory"))
            continue
        groups.setdefault(find_config_root(path), []).append(path)
    for root, selected in groups.items():
        _validate_root(root, selected, environ, report)
    return report


def _validate_root(
    root: Path, selected: list[Path], environ: Mapping[str, str], report: ValidationReport
) -> None:
    def shown(relpath: str) -> str:
        return os.path.relpath(root / relpath)

    config, config_errors = load_repo_config(read_config_bytes(root))
    report.errors += [_moved(p, shown(CONFIG_FILE)) for p in config_errors]
    files: list[Path] = []
    for path in selected:
        files += list_manifests(root, config, under=path) if path.is_dir() else [path]
    tree = read_manifests(root, config, only=dict.fromkeys(files))
    report.errors += [_moved(p, shown(p.path)) for p in tree.errors]
    manifests = load_manifest_set(
        tree.files, config=config, variables=merge_variables(config.variables, environ)
    )
    report.files += manifests.files
    report.workflows += len(manifests.workflows)
    report.errors += [_moved(p, shown(p.path)) for p in manifests.errors]
    report.notes += [_moved(p, shown(p.path)) for p in manifests.notes]


def _moved(problem: Problem, path: str) -> Problem:
    return Problem(
        path, problem.line, problem.column, problem.field, problem.message, problem.severity
    )
