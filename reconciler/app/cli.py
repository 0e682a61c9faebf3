"""The ``reconciler`` command line: one click command per verb, output via rich.

Machine-readable output (``--format json``, the ``PATH:LINE:COL`` lines) goes
to stdout unstyled; decoration goes to stderr, so pipes stay clean.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from reconciler import __version__
from reconciler.app.validation import validate_paths
from reconciler.core.schemas import workflow_json_schema

stderr = Console(stderr=True, highlight=False)


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


def main() -> None:
    cli(prog_name="reconciler")
