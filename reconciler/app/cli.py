"""The ``reconciler`` command line: one click command per verb, output via rich.

Machine-readable output (``--format json``, the ``PATH:LINE:COL`` lines) goes
to stdout unstyled; decoration goes to stderr, so pipes stay clean.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console
from rich.table import Table

from reconciler import __version__
from reconciler.adapters.clocks import SystemClock
from reconciler.app.daemon import Daemon, LoopOptions
from reconciler.app.settings import Settings, SettingsError, load_settings
from reconciler.app.syncing import Syncer, SyncOptions, SyncOutcome
from reconciler.app.validation import validate_paths
from reconciler.app.wiring import build_source, build_store, deletion_policy
from reconciler.core.schemas import workflow_json_schema
from reconciler.core.workflows import AppliedWorkflow
from reconciler.ports import ReconcilerError

stderr = Console(stderr=True, highlight=False)
# Off a terminal (pipes, CI logs) tables keep their full width instead of 80 columns.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


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


def make_syncer(settings: Settings) -> Syncer:
    try:
        source = build_source(settings)
        store = build_store(settings)
    except (SettingsError, ReconcilerError) as exc:
        raise click.ClickException(str(exc)) from exc
    return Syncer(
        source,
        store,
        clock=SystemClock(),
        options=SyncOptions(
            owner=settings.owner, policy=deletion_policy(settings), environ=dict(os.environ)
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


@cli.command()
@source_options
@settings_options
def sync(**flags: Any) -> None:
    """Run one reconcile pass; exit 0 when it succeeded, 1 when not."""
    settings = resolve_settings(**flags)
    syncer = make_syncer(settings)
    outcome = syncer.sync(force=True)
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
    syncer = make_syncer(settings)
    loop = Daemon(
        syncer,
        options=LoopOptions(interval=settings.interval, jitter=settings.jitter, once=once),
        on_outcome=report_outcome,
    )
    loop.install_signal_handlers()
    if settings.watch and settings.repo is not None:
        from reconciler.adapters.watching import watch_directory

        watch_directory(
            Path(settings.repo) / settings.path, on_change=loop.poke, stop_event=loop.stop_event
        )
        stderr.print(f"watching {Path(settings.repo) / settings.path} for changes (Ctrl-C to stop)")
    sys.exit(loop.run())


def workflow_row(workflow: AppliedWorkflow) -> dict[str, Any]:
    return {
        "workspace": workflow.workspace,
        "name": workflow.name,
        "state": workflow.state,
        "suspended": workflow.suspended,
        "revision": workflow.revision,
        "path": workflow.path,
        "source": workflow.source,
        "owner": workflow.owner,
        "updated_at": workflow.updated_at.isoformat(),
    }


@cli.command()
@settings_options
@click.option("-n", "--name", help="Only this workflow.")
@click.option("-w", "--workspace", default="public", show_default=True, help="Workspace to list.")
@click.option("-a", "--all-workspaces", is_flag=True, help="List across all workspaces.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
)
def get(name: str | None, workspace: str, all_workspaces: bool, output: str, **flags: Any) -> None:
    """Show applied workflows with state, applied revision and the last sync."""
    settings = resolve_settings(**flags)
    store = build_store(settings)
    workflows = [
        w
        for w in store.all_workflows()
        if (all_workspaces or w.workspace == workspace) and (name is None or w.name == name)
    ]
    last = store.last_sync()
    if name is not None and not workflows:
        raise click.ClickException(
            f"no workflow {name!r} in workspace {workspace!r}; list them with: reconciler get -a"
        )
    rows = [workflow_row(w) for w in workflows]
    if output != "table":
        document = {
            "workflows": rows,
            "last_sync": None
            if last is None
            else {
                "revision": last.revision,
                "result": last.result,
                "finished_at": last.finished_at.isoformat(),
                "message": last.message,
            },
        }
        click.echo(
            json.dumps(document, indent=2)
            if output == "json"
            else yaml.safe_dump(document, sort_keys=False)
        )
        return
    table = Table(box=None, header_style="bold")
    for column in ("WORKSPACE", "NAME", "STATE", "REVISION", "PATH", "UPDATED"):
        table.add_column(column)
    for w in workflows:
        state = w.state + (" (suspended)" if w.suspended else "")
        table.add_row(
            w.workspace,
            w.name,
            state,
            w.revision[:12],
            w.path,
            w.updated_at.strftime("%Y-%m-%d %H:%M:%SZ"),
        )
    stdout.print(table)
    if last is not None:
        stderr.print(
            f"last sync: {last.result} at {last.finished_at:%Y-%m-%d %H:%M:%SZ}, "
            f"revision {(last.revision or '?')[:12]}"
            + (f" ({last.message})" if last.message else "")
        )


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


def main() -> None:
    cli(prog_name="reconciler")
