"""Building sources and backends from settings: the one place that knows every adapter."""

from __future__ import annotations

from pathlib import Path

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.gitsource import GitCredentials, GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.app.settings import Settings, SettingsError
from reconciler.core.planning import DeletionPolicy
from reconciler.ports import Source


def is_git_location(repo: str) -> bool:
    """A URL, or a local path holding a git repository (work tree or bare)."""
    if "://" in repo or (":" in repo and "@" in repo.split(":", 1)[0]):
        return True
    path = Path(repo)
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def build_source(settings: Settings) -> Source:
    """A git source for URLs and repositories; a directory source for plain folders or --watch."""
    if settings.repo is None:
        raise SettingsError("no repository: pass --repo URL|PATH or set RECONCILER_REPO")
    if settings.watch or not is_git_location(settings.repo):
        directory = Path(settings.repo) / settings.path
        if not directory.is_dir():
            raise SettingsError(f"--repo {settings.repo}: no such directory {directory}")
        return DirectorySource(directory)
    credentials = GitCredentials(
        token=settings.token(),
        username=settings.git_username,
        ssh_key_file=settings.ssh_key_file,
        known_hosts_file=settings.known_hosts_file,
        strict_host_key_checking=not settings.insecure_skip_host_key_check,
    )
    url = settings.repo
    if "://" not in url and Path(url).exists():
        url = Path(url).resolve().as_uri()
    return GitSource(
        url,
        branch=settings.branch,
        path=settings.path,
        cache_dir=settings.state_dir / "git",
        credentials=credentials,
        timeout_seconds=settings.git_timeout,
    )


def build_store(settings: Settings) -> LocalStore:
    return LocalStore(settings.state_dir, clock=SystemClock())


def deletion_policy(settings: Settings) -> DeletionPolicy:
    return DeletionPolicy(
        max_share=settings.max_deletion_share,
        max_count=settings.max_deletions,
        allow_prune=settings.allow_prune,
    )
