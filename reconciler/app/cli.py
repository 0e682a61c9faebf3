"""The ``reconciler`` command line: one click command per verb, output via rich.

Machine-readable output (``--format json``, the ``PATH:LINE:COL`` lines) goes
to stdout unstyled; decoration goes to stderr, so pipes stay clean.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler.adapters.clocks import SystemClock
from reconciler.app import lifecycle
from reconciler.app.cli_common import (
    make_syncer,
    report_outcome,
    resolve_settings,
    settings_options,
    source_options,
    stderr,
)
from reconciler.app.serving import serve
from reconciler.app.validation import validate_paths
from reconciler.app.wiring import (
    build_store,
    deletion_policy,
)
from reconciler.core.schemas import workflow_json_schema
from reconciler.ports import ReconcilerError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconciler", message="%(prog)s %(version)s")
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
    sys.exit(serve(resolve_settings(**flags), once=once))


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


def main() -> None:
    cli(prog_name="reconciler")
