"""Building sources and backends from settings: the one place that knows every adapter."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.adapters.clocks import SystemClock, parse_clock_warp
from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.gitsource import GitCredentials, GitSource
from reconciler.adapters.local.runner import LocalStepRunner
from reconciler.adapters.local.secrets import SecretStore
from reconciler.adapters.local.store import LocalStore
from reconciler.adapters.statusbranch import StatusWriter
from reconciler.app.settings import Settings, SettingsError
from reconciler.app.syncing import Verification
from reconciler.core.planning import DeletionPolicy
from reconciler.core.signing import Signer, allowed_signers_text
from reconciler.ports import NULL_RECORDER, Recorder, RunBackend, Source, StepRunner

if TYPE_CHECKING:  # the Kubernetes client is imported only when that backend is chosen
    from reconciler.adapters.kubernetes.client import KubeClient
    from reconciler.adapters.kubernetes.jobs import ComputeProfile
    from reconciler.adapters.kubernetes.leases import LeaderElector


def is_git_location(repo: str) -> bool:
    """A URL, or a local path holding a git repository (work tree or bare)."""
    if "://" in repo or (":" in repo and "@" in repo.split(":", 1)[0]):
        return True
    path = Path(repo)
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def git_credentials(settings: Settings) -> GitCredentials:
    return GitCredentials(
        token=settings.token(),
        username=settings.git_username,
        ssh_key_file=settings.ssh_key_file,
        known_hosts_file=settings.known_hosts_file,
        strict_host_key_checking=not settings.insecure_skip_host_key_check,
    )


def status_enabled(settings: Settings) -> bool:
    """On for git sources unless switched off; a plain directory has no branch to write."""
    if settings.status_enabled is not None:
        return settings.status_enabled
    return settings.repo is not None and not settings.watch and is_git_location(settings.repo)


def build_status_writer(settings: Settings, *, recorder: Recorder = NULL_RECORDER) -> StatusWriter:
    url = settings.status_repo or settings.repo
    if url is None:
        raise SettingsError("the status branch needs a repository: set status_repo or repo")
    return StatusWriter(
        url,
        branch=settings.status_branch,
        source_branch=settings.branch,
        cache_dir=settings.state_dir / "git",
        credentials=git_credentials(settings),
        author_name=settings.status_author_name,
        author_email=settings.status_author_email,
        signing_key=settings.status_signing_key,
        timeout_seconds=settings.git_timeout,
        squash_depth=settings.status_squash_depth,
        recorder=recorder,
    )


def build_source(settings: Settings, *, recorder: Recorder = NULL_RECORDER) -> Source:
    """A git source for URLs and repositories; a directory source for plain folders or --watch."""
    if settings.repo is None:
        raise SettingsError("no repository: pass --repo URL|PATH or set RECONCILER_REPO")
    if settings.watch or not is_git_location(settings.repo):
        directory = Path(settings.repo) / settings.path
        if not directory.is_dir():
            raise SettingsError(f"--repo {settings.repo}: no such directory {directory}")
        return DirectorySource(directory)
    credentials = git_credentials(settings)
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
        recorder=recorder,
    )


def build_clock(settings: Settings) -> SystemClock:
    """The system clock, or a warped one (``clock_warp``: simulations and tests)."""
    return SystemClock() if settings.clock_warp is None else parse_clock_warp(settings.clock_warp)


def build_store(settings: Settings) -> RunBackend:
    """The backend the settings name: the local store, or the Kubernetes API."""
    if settings.backend == "kubernetes":
        from reconciler.adapters.kubernetes.backend import KubernetesBackend

        return KubernetesBackend(
            kube_client(settings),
            namespace=settings.kube_namespace,
            owner=settings.owner,
            clock=build_clock(settings),
            run_history=settings.kube_run_history,
            workspaces=frozenset(settings.kube_workspaces),
        )
    return LocalStore(settings.state_dir, clock=build_clock(settings))


@functools.cache
def _kube_client(kubeconfig: Path | None, context: str | None) -> KubeClient:
    from reconciler.adapters.kubernetes.client import KubeClient, load_api_client

    return KubeClient(load_api_client(kubeconfig=kubeconfig, context=context))


def kube_client(settings: Settings) -> KubeClient:
    """One client (one connection pool) per configuration for the whole process."""
    return _kube_client(settings.kubeconfig, settings.kube_context)


def compute_profiles(settings: Settings) -> dict[str, ComputeProfile]:
    from reconciler.adapters.kubernetes.jobs import ComputeProfile

    return {
        name: ComputeProfile(
            node_selector=dict(profile.node_selector),
            tolerations=tuple(profile.tolerations),
        )
        for name, profile in settings.compute.items()
    }


def build_runner(settings: Settings) -> StepRunner:
    """Where steps run: local processes, or Jobs."""
    if settings.backend == "kubernetes":
        from reconciler.adapters.kubernetes.runner import KubernetesStepRunner

        return KubernetesStepRunner(
            kube_client(settings),
            owner=settings.owner,
            clock=build_clock(settings),
            compute=compute_profiles(settings),
            stuck_grace=settings.kube_stuck_grace,
            job_ttl=settings.kube_job_ttl,
        )
    return LocalStepRunner(
        settings.state_dir, secrets=SecretStore(settings.state_dir), clock=build_clock(settings)
    )


def identity(settings: Settings) -> str:
    """Who this replica is in leader election: the pod's name, else host and pid."""
    return (
        settings.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    )


def build_elector(settings: Settings) -> LeaderElector:
    from reconciler.adapters.kubernetes.leases import LeaderElector, LeaseTimings

    return LeaderElector(
        kube_client(settings),
        namespace=settings.kube_namespace,
        name=settings.lease_name,
        identity=identity(settings),
        clock=build_clock(settings),
        timings=LeaseTimings(
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
        ),
    )


def deletion_policy(settings: Settings) -> DeletionPolicy:
    return DeletionPolicy(
        max_share=settings.max_deletion_share,
        max_count=settings.max_deletions,
        allow_prune=settings.allow_prune,
    )


def start_watching(backend: RunBackend, runner: StepRunner) -> None:
    """Kubernetes: follow Workflows, Jobs and pods by watches (the daemon's reads and step
    results come from them). The local backend has nothing to watch."""
    from reconciler.adapters.kubernetes.backend import KubernetesBackend
    from reconciler.adapters.kubernetes.runner import KubernetesStepRunner

    if isinstance(backend, KubernetesBackend):
        backend.start_watching()
    if isinstance(runner, KubernetesStepRunner):
        runner.start_watching()


def verification(settings: Settings) -> Verification | None:
    """With verify_commits on: the signers, and git's allowed-signers file written from them
    into the state directory (the repository never supplies either)."""
    if not settings.verify_commits:
        return None
    if not settings.signers:
        raise SettingsError(
            "verify_commits is on but no signers are configured: list them under `signers:` "
            "(name, email, key, roles) in the daemon's config"
        )
    signers = tuple(
        Signer(name=s.name, principal=s.email, key=s.key, roles=frozenset(s.roles))
        for s in settings.signers
    )
    path = settings.state_dir / "allowed_signers"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(allowed_signers_text(signers))
    return Verification(signers, path.resolve())
