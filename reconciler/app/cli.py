"""The ``reconciler`` command line: one click command per verb, output via rich.

Machine-readable output (``--format json``, the ``PATH:LINE:COL`` lines) goes
to stdout unstyled; decoration goes to stderr, so pipes stay clean.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.locks import StateLock
from reconciler.adapters.local.secrets import SecretStore
from reconciler.app import lifecycle
from reconciler.app.cli_common import (
    make_syncer,
    report_outcome,
    resolve_settings,
    settings_options,
    source_options,
    stderr,
)
from reconciler.app.daemon import Daemon, LoopOptions
from reconciler.app.health import Health, HealthServer
from reconciler.app.reporting import ReportingOptions, StatusReporter
from reconciler.app.running import Executor, ExecutorOptions
from reconciler.app.scheduling import Scheduler
from reconciler.app.settings import Settings, SettingsError
from reconciler.app.validation import validate_paths
from reconciler.app.wiring import (
    build_elector,
    build_runner,
    build_status_writer,
    build_store,
    deletion_policy,
    start_watching,
    status_enabled,
)
from reconciler.core.schemas import workflow_json_schema
from reconciler.core.slots import CatchUpPolicy
from reconciler.ports import ReconcilerError, StepRunner


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconciler")
def cli() -> None:
    """GitOps reconciler for DataOS v2alpha Workflows."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one PATH:LINE:COL: FIELD: message line per problem; json: a report.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, no notes or summary.")
def validate(paths: tuple[Path, ...], output_format: str, quiet: bool) -> None:
    """Validate Workflow manifests: files, or directories searched for *.yaml / *.yml.

    Exits 0 when everything is valid, 1 when anything is not.
    """
    report = validate_paths(list(paths), environ=os.environ)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for problem in report.errors:
            click.echo(problem.render())
        if not quiet:
            for note in report.notes:
                click.echo(note.render())
            if report.valid:
                stderr.print(
                    f"[green]✓[/] {report.workflows} workflow(s) in {report.files} file(s) valid"
                )
            else:
                stderr.print(
                    f"[red]✗[/] {len(report.errors)} error(s) in {report.files} file(s); "
                    "fix each line above and run validate again"
                )
    sys.exit(0 if report.valid else 1)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the Workflow manifest (for yaml-language-server)."""
    click.echo(json.dumps(workflow_json_schema(), indent=2))


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"reconciler {__version__}")


@cli.command()
@source_options
@settings_options
def sync(**flags: Any) -> None:
    """Run one reconcile pass; exit 0 when it succeeded, 1 when not."""
    settings = resolve_settings(**flags)
    syncer = make_syncer(settings)
    try:
        outcome = syncer.sync(force=True)
    finally:
        syncer.close()
    report_outcome(outcome)
    sys.exit(0 if outcome.ok else 1)


@cli.command()
@source_options
@settings_options
@click.option(
    "--watch", is_flag=True, default=None, help="Reconcile a local directory on every save."
)
@click.option("--once", is_flag=True, help="Run one pass and exit (its result is the exit code).")
@click.option("--interval", type=float, help="Seconds between polls (default 60).")
def daemon(once: bool, **flags: Any) -> None:
    """Keep the backend equal to the repository: poll, plan, apply, until SIGTERM."""
    settings = resolve_settings(**flags)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    lock = StateLock(settings.state_dir)
    if not once and not lock.acquire():
        raise click.ClickException(
            f"another daemon (pid {lock.holder()}) already uses the state directory "
            f"{settings.state_dir}; one daemon per state directory"
        )
    try:
        backend = build_store(settings)
    except (SettingsError, ReconcilerError) as exc:
        raise click.ClickException(str(exc)) from exc
    syncer = make_syncer(settings, backend)
    clock = SystemClock()
    scheduler = executor = None
    runner = build_runner(settings)
    if not once:
        executor = Executor(
            backend,
            runner,
            clock=clock,
            options=ExecutorOptions(max_parallel=settings.max_parallel),
        )
        scheduler = Scheduler(
            backend,
            clock=clock,
            policy=CatchUpPolicy(
                mode=settings.catch_up,
                starting_deadline=timedelta(seconds=settings.starting_deadline),
            ),
            on_created=executor.notify,
        )
    reporter = None
    if not once and status_enabled(settings):
        reporter = StatusReporter(
            backend,
            build_status_writer(settings),
            clock=clock,
            **_report_logs(settings, runner),
            options=ReportingOptions(
                keep_succeeded=settings.status_keep_succeeded,
                keep_failed=settings.status_keep_failed,
            ),
        )
    health = Health(clock.monotonic, stale_after=max(300.0, 5 * settings.interval))
    loop = Daemon(
        syncer,
        options=LoopOptions(
            interval=settings.interval,
            jitter=settings.jitter,
            once=once,
            shutdown_grace=settings.shutdown_grace,
            status_flush_interval=settings.status_flush_interval,
        ),
        on_outcome=report_outcome,
        scheduler=scheduler,
        executor=executor,
        reporter=reporter,
        health=health,
    )
    loop.install_signal_handlers()
    server = None
    if settings.http_address and not once:
        server = HealthServer(settings.http_address, health)
        server.start()
    elector = None
    try:
        if settings.backend == "kubernetes" and settings.leader_election and not once:
            elector = build_elector(settings)
            health.set_role("standby")
            stderr.print(
                f"{elector.identity}: standby until it holds the lease "
                f"{settings.kube_namespace}/{settings.lease_name}"
            )
            if not elector.acquire(loop.stop_event):
                sys.exit(0)  # stopped while waiting
            elector.keep_in_background(loop.stop_event, on_lost=loop.lose_leadership)
        health.set_role("leader")
        if not once and settings.backend == "kubernetes":
            start_watching(backend, runner)
        if settings.watch and settings.repo is not None:
            from reconciler.adapters.watching import watch_directory

            directory = Path(settings.repo) / settings.path
            watch_directory(directory, on_change=loop.poke, stop_event=loop.stop_event)
            stderr.print(f"watching {directory} for changes (Ctrl-C to stop)")
        code = loop.run()
        health.set_role("stopping")
        if elector is not None and not elector.is_leader:
            stderr.print("lost the lease: exiting so a fresh start waits as a standby")
            code = 1
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if elector is not None:
            elector.release()
        if server is not None:
            server.stop()
    sys.exit(code)


def _report_logs(settings: Settings, runner: StepRunner) -> dict[str, Any]:
    """Log tails for the status branch: only where secret values are known to redact them.

    The local backend knows every secret value (its store) and redacts them; on
    Kubernetes the daemon never reads a Secret, so it cannot redact a step that
    prints one: reports there carry no log tails (read them with `reconciler log`).
    """
    if settings.backend == "kubernetes":
        return {"read_log": _no_log, "secret_values": tuple}
    secrets = SecretStore(settings.state_dir)
    return {"read_log": runner.read_log, "secret_values": lambda: all_secret_values(secrets)}


def _no_log(workspace: str, run_id: str, step: str) -> bytes | None:
    return None


@cli.command()
@click.option(
    "--repo",
    "repository",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=".",
    show_default=True,
    help="Local git repository (a checkout).",
)
@click.option(
    "--path", "path", default="", help="Directory of the manifests inside the repository."
)
@click.option(
    "--head", default="HEAD", show_default=True, help="Revision to plan (the pull request)."
)
@click.option(
    "--base",
    help="Revision to compare with (the target branch); default: the applied state.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "json", "text"]),
    default="text",
    show_default=True,
)
@click.option(
    "--allow-prune", is_flag=True, help="Plan as if the max-deletions guard were overridden."
)
@settings_options
def plan(
    repository: Path,
    path: str,
    head: str,
    base: str | None,
    output_format: str,
    allow_prune: bool,
    **flags: Any,
) -> None:
    """Show what merging HEAD would do: creates, updates (field by field), moves, deletes.

    Exit codes: 0 no change, 2 changes, 1 invalid manifests.
    """
    from reconciler.app.reviewing import review_change
    from reconciler.core.planreports import render_markdown, render_text, report_as_dict

    settings = resolve_settings(allow_prune=allow_prune or None, **flags)
    try:
        report = review_change(
            repository,
            head=head,
            base=base,
            path=path,
            backend=None if base is not None else build_store(settings),
            owner=settings.owner,
            policy=deletion_policy(settings),
            environ=os.environ,
            now=SystemClock().now(),
        )
    except (ReconcilerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if output_format == "markdown":
        click.echo(render_markdown(report), nl=False)
    elif output_format == "json":
        click.echo(json.dumps(report_as_dict(report), indent=2))
    else:
        click.echo(render_text(report), nl=False)
    sys.exit(report.exit_code)


lifecycle.register(cli)


def all_secret_values(secrets: SecretStore) -> list[str]:
    """Every value in the local secret store: what the status branch must never show."""
    return [value for secret_id in secrets.list() for value in secrets.get(secret_id).values()]


def main() -> None:
    cli(prog_name="reconciler")
