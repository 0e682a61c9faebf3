"""The manifests repository's own configuration, ``.reconciler.yaml`` at its root.

It defines the ``${NAME}`` variables, maps directories to workspaces, lists
YAML files that are not manifests, and says who is notified of which runs
(``notifications``; the targets' URLs are the daemon's, never the
repository's). It holds nothing that grants rights: a repository must not be
able to widen what the daemon lets it do.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from reconciler.core.access import AccessRule
from reconciler.core.manifests import EnvName, WireModel, WorkspaceName
from reconciler.core.notifications import NotificationRule
from reconciler.core.signing import OwnershipRule

CONFIG_FILE = ".reconciler.yaml"
DEFAULT_WORKSPACE = "public"


class WorkspaceMapping(WireModel):
    """Which workspace a manifest belongs to, by its directory."""

    default: WorkspaceName = DEFAULT_WORKSPACE
    paths: dict[str, WorkspaceName] = Field(default_factory=dict)

    def workspace_for(self, relpath: str) -> str:
        """Longest matching directory prefix wins; otherwise the default."""
        best, best_len = self.default, -1
        for prefix, workspace in self.paths.items():
            directory = prefix.strip("/")
            if not directory:
                continue
            if (relpath == directory or relpath.startswith(directory + "/")) and len(
                directory
            ) > best_len:
                best, best_len = workspace, len(directory)
        return best


class Limits(WireModel):
    max_manifest_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20


class RepoConfig(WireModel):
    """``.reconciler.yaml``; a key left empty (``variables:`` with only comments) is unset."""

    version: Literal["v1"] = "v1"
    variables: dict[EnvName, str] = Field(default_factory=dict)
    workspaces: WorkspaceMapping = WorkspaceMapping()
    exclude: tuple[str, ...] = ()
    limits: Limits = Limits()
    notifications: tuple[NotificationRule, ...] = ()
    # who may change which paths, when the daemon verifies commits (see core/signing.py)
    owners: tuple[OwnershipRule, ...] = ()
    # who owns which workflows and whom they grant use (run, cancel, read); see core/access.py
    access: tuple[AccessRule, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def is_manifest_path(self, relpath: str) -> bool:
        """Whether a repo-relative path is read as a manifest.

        YAML files only; hidden files and anything under a hidden directory
        (``.github/``...) never are, nor files matching an ``exclude`` glob
        (fnmatch: ``*`` also matches ``/``).
        """
        if not relpath.endswith((".yaml", ".yml")):
            return False
        if any(part.startswith(".") for part in relpath.split("/")):
            return False
        return not any(fnmatch.fnmatchcase(relpath, pattern) for pattern in self.exclude)
