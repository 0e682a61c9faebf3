"""What the ``reconciler`` commands share: settings options, wiring, console output."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from reconciler.app.settings import Settings, SettingsError, load_settings
from reconciler.app.syncing import Syncer, SyncOptions, SyncOutcome
from reconciler.app.wiring import (
    build_clock,
    build_source,
    build_store,
    deletion_policy,
    verification,
)
from reconciler.ports import NULL_RECORDER, Backend, ReconcilerError, Recorder

stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # messages never wrapped
# Off a terminal (pipes, CI logs) tables keep their full width instead of 80 columns.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


# -- settings shared by the commands that touch a source or a backend -------------------


def settings_options(func: F) -> F:
    """--config, --state-dir and --owner: what every backend command needs."""

    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help="Settings file (YAML); also RECONCILER_CONFIG.",
    )
    @click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        help="Local backend state directory; also RECONCILER_STATE_DIR.",
    )
    @click.option("--owner", help="Inventory name of this reconciler (default: default).")
    @click.option(
        "--backend",
        type=click.Choice(["local", "kubernetes"]),
        help="Where workflows live and run (default: local); also RECONCILER_BACKEND.",
    )
    @click.option(
        "--kubeconfig",
        type=click.Path(path_type=Path),
        help="Kubernetes config file (default: in-cluster, else ~/.kube/config).",
    )
    @click.option("--kube-context", help="Context of the kubeconfig to use.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def source_options(func: F) -> F:
    """Where the manifests come from, and how deletion is guarded."""

    @click.option(
        "--repo",
        help="git URL (file://, https://, ssh://, user@host:path), repository or directory.",
    )
    @click.option("--branch", help="Branch holding the manifests (default: main).")
    @click.option("--path", "path", help="Directory of the manifests inside the repository.")
    @click.option(
        "--allow-prune",
        is_flag=True,
        default=None,
        help="Let a plan through the max-deletions guard.",
    )
    @click.option(
        "--ssh-key-file", type=click.Path(path_type=Path), help="Private key for ssh:// remotes."
    )
    @click.option(
        "--known-hosts-file",
        type=click.Path(path_type=Path),
        help="known_hosts for ssh:// remotes (checked strictly).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def resolve_settings(**flags: Any) -> Settings:
    config_file = flags.pop("config_file", None)
    try:
        return load_settings(flags, environ=os.environ, config_file=config_file)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


def make_syncer(
    settings: Settings, store: Backend | None = None, *, recorder: Recorder = NULL_RECORDER
) -> Syncer:
    try:
        source = build_source(settings, recorder=recorder)
        store = store if store is not None else build_store(settings)
        checks = verification(settings)
    except (SettingsError, ReconcilerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    return Syncer(
        source,
        store,
        clock=build_clock(settings),
        options=SyncOptions(
            owner=settings.owner,
            policy=deletion_policy(settings),
            environ=dict(os.environ),
            verification=checks,
        ),
        sleep=time.sleep,
    )


def report_outcome(outcome: SyncOutcome) -> None:
    """One line per pass on stderr, plus each error and failure."""
    revision = (outcome.revision or "?")[:12]
    if outcome.result == "unchanged":
        stderr.print(f"[dim]revision {revision}: up to date[/]")
        return
    summary = outcome.plan.summary() if outcome.plan else {}
    counts = ", ".join(f"{v} {k}" for k, v in summary.items() if v)
    colour = {"succeeded": "green", "blocked": "yellow"}.get(outcome.result, "red")
    stderr.print(f"[{colour}]{outcome.result}[/] revision {revision}: {counts or 'no changes'}")
    for error in outcome.errors:
        stderr.print(f"  [red]error[/] {error.render()}", markup=True, soft_wrap=True)
    for key, message in outcome.failures.items():
        stderr.print(f"  [red]apply failed[/] {key}: {message}", soft_wrap=True)
    if outcome.message and (outcome.result == "blocked" or outcome.plan is None):
        stderr.print(f"  {outcome.message}", soft_wrap=True)
