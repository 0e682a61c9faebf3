"""The lifecycle commands, mirroring ``dataos-ctl resource ...``: get, runtime, log, run, cancel...

Each reads or writes the local backend's state directly, so they work with
or without a daemon. ``run --wait`` executes the run itself when no daemon
holds the state directory; otherwise it waits for the daemon to do it. The
seed's spellings work too: ``reconciler resource get -t workflow -n NAME -d``.

Machine output (``-o json`` / ``-o yaml``) goes to stdout alone and is a stable
interface: keys are snake_case and only ever added, never renamed; times are
ISO 8601 in UTC with milliseconds and a ``Z`` (``2026-03-08T07:30:00.000Z``:
fixed width, so they sort as strings); absent values are ``null``. The keys of
each command are listed in :data:`MACHINE_KEYS` and in its ``--help``.
``log`` prints the raw step output and has no ``-o``.
"""

from __future__ import annotations

import difflib
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, overload

import click
import yaml
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.locks import StateLock
from reconciler.adapters.local.secrets import SecretNotFound, SecretStore
from reconciler.app.cli_common import resolve_settings, settings_options, stderr, stdout
from reconciler.app.completion import (
    complete_run_ids,
    complete_step_names,
    complete_workflow_names,
    completion_command,
)
from reconciler.app.running import Executor
from reconciler.app.scheduling import resume_from_now
from reconciler.app.settings import Settings
from reconciler.app.triggering import TriggerRefused, trigger_run
from reconciler.app.wiring import build_runner, build_store
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import WorkflowKey
from reconciler.core.runs import Run
from reconciler.core.slots import next_fire_times
from reconciler.core.workflows import AppliedWorkflow, DesiredWorkflow
from reconciler.ports import ReconcilerError, RunBackend

OUTPUTS = click.Choice(["table", "json", "yaml"])
OUTPUT_HELP = "table for people; json or yaml for machines (keys below)."

# The documented keys of each command's json/yaml output (a key is only ever added).
MACHINE_KEYS: dict[str, str] = {
    "get": (
        "{workflows: [{workspace, name, state, suspended, last_run, result, next_run, "
        "revision, path, source, owner, updated_at; with -d also spec (the manifest as "
        "applied), images {step: image}, recent_runs [{run, state, trigger, reason, "
        "created_at, finished_at}]}], last_sync: {revision, result, started_at, finished_at, "
        "message} or null}"
    ),
    "runtime get": (
        "{workflow (workspace/name), workspace, run, state, trigger, requested_by, slot, "
        "revision, created_at, started_at, finished_at, reason, duration_seconds, "
        "cancel_requested, steps: [{name, depends, state, started_at, finished_at, exit_code, "
        "reason, duration_seconds, image}]}"
    ),
    "events": "[{at, workflow (workspace/name), run, kind, message}], newest first",
    "next-runs": (
        "{workflow (workspace/name), timezone, crons, from, next_runs (in the workflow's "
        "time zone, with its UTC offset), next_runs_utc}"
    ),
    "secret list": "{secrets: [{id, keys}]} (key names only, never values)",
}


def machine_epilog(command: str) -> str:
    return f"-o json|yaml keys: {MACHINE_KEYS[command]}. Times are ISO 8601 in UTC."


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
def iso(moment: datetime | None) -> str | None:
    """``2026-03-08T07:30:00.000Z``: UTC, milliseconds, fixed width (sorts as a string)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_store(settings: Settings) -> RunBackend:
    try:
        return build_store(settings)
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc


def backend_label(settings: Settings) -> str:
    """Where the commands looked, for messages: a wrong --state-dir is a common slip."""
    if settings.backend == "kubernetes":
        context = f" (context {settings.kube_context})" if settings.kube_context else ""
        return f"the Kubernetes backend{context}"
    return f"the state directory {settings.state_dir}"


def ws_flag(workspace: str) -> str:
    """`` -w WORKSPACE`` for a suggested command line, nothing for the default workspace."""
    return "" if workspace == "public" else f" -w {workspace}"


def listing(names: Sequence[str], *, most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def unknown_workflow(
    store: RunBackend, name: str, workspace: str, settings: Settings | None = None
) -> str:
    """What to say about a workflow that is not there, and what to do instead."""
    applied = store.all_workflows()
    elsewhere = sorted({w.workspace for w in applied if w.name == name})
    message = f"no workflow {name!r} in workspace {workspace!r}"
    if settings is not None:
        message += f" of {backend_label(settings)}"
    if elsewhere:
        flags = " or ".join(f"-w {w}" for w in elsewhere)
        return f"{message}; it is in workspace {', '.join(elsewhere)}: add {flags}"
    tombstone = store.get_workflow(WorkflowKey(f"{workspace}/{name}"))
    if tombstone is not None:  # kept with state "deleted"
        return (
            f"{message}: it was deleted ({tombstone.path} left git, or --force); its history: "
            f"reconciler events -n {name}{ws_flag(workspace)}"
        )
    if not applied:
        return (
            f"{message}: nothing is applied there yet. Apply the manifests with "
            "`reconciler sync --repo REPO` (or run the daemon), or point at the right "
            "backend with --state-dir / --backend"
        )
    known = sorted(w.name for w in applied if w.workspace == workspace)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    if known:
        hint += f" Known in {workspace}: {listing(known)}."
    else:
        workspaces = sorted({w.workspace for w in applied})
        hint += f" Workspace {workspace!r} has none; workspaces: {', '.join(workspaces)}."
    return f"{message}{hint} List them all with: reconciler get -a"


def find_workflow(
    store: RunBackend, name: str, workspace: str, settings: Settings | None = None
) -> AppliedWorkflow:
    workflow = store.get_workflow(WorkflowKey(f"{workspace}/{name}"))
    if workflow is None or workflow.state == "deleted":
        raise click.ClickException(unknown_workflow(store, name, workspace, settings))
    return workflow


def emit(document: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def next_run(workflow: AppliedWorkflow, now: datetime) -> datetime | None:
    schedule = workflow.spec["spec"].get("schedule")
    if not schedule or workflow.suspended:
        return None
    upcoming = next_fire_times(schedule["crons"], schedule["timezone"], after=now, count=1)
    return upcoming[0] if upcoming else None


def step_images(spec: Any) -> dict[str, str | None]:
    return {
        s["name"]: (s.get("spec") or {}).get("stackSpec", {}).get("image")
        for s in spec["spec"]["dag"]
    }


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_summary(run: Run) -> dict[str, Any]:
    """``runtime get -o json``: see MACHINE_KEYS."""
    images = step_images(run.spec)
    return {
        "workflow": run.key,
        "workspace": run.workspace,
        "run": run.run_id,
        "state": run.state,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "slot": iso(run.slot),
        "revision": run.revision,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "reason": run.reason,
        "duration_seconds": rounded(run.duration_seconds),
        "cancel_requested": run.cancel_requested,
        "steps": [
            {
                "name": s.name,
                "depends": list(s.depends),
                "state": s.state,
                "started_at": iso(s.started_at),
                "finished_at": iso(s.finished_at),
                "exit_code": s.exit_code,
                "reason": s.reason,
                "duration_seconds": rounded(s.duration_seconds),
                "image": images.get(s.name),
            }
            for s in run.steps
        ],
    }


def workflow_document(
    store: RunBackend, workflow: AppliedWorkflow, *, detail: bool
) -> dict[str, Any]:
    """One item of ``get -o json``: see MACHINE_KEYS."""
    now = datetime.now(UTC)
    last = store.runs_of(workflow.key, limit=1)
    document: dict[str, Any] = {
        "workspace": workflow.workspace,
        "name": workflow.name,
        "state": workflow.state,
        "suspended": workflow.suspended,
        "last_run": last[0].run_id if last else None,
        "result": last[0].state if last else None,
        "next_run": iso(next_run(workflow, now)),
        "revision": workflow.revision,
        "path": workflow.path,
        "source": workflow.source,
        "owner": workflow.owner,
        "updated_at": iso(workflow.updated_at),
    }
    if detail:
        document["spec"] = dict(workflow.spec)
        document["images"] = step_images(workflow.spec)
        document["recent_runs"] = [
            {
                "run": r.run_id,
                "state": r.state,
                "trigger": r.trigger,
                "reason": r.reason,
                "created_at": iso(r.created_at),
                "finished_at": iso(r.finished_at),
            }
            for r in store.runs_of(workflow.key, limit=10)
        ]
    return document


# -- get ------------------------------------------------------------------------


def _get(
    name: str | None,
    workspace: str,
    all_workspaces: bool,
    detail: bool,
    output: str,
    flags: dict[str, Any],
) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    if name is not None and not all_workspaces:
        workflows = [find_workflow(store, name, workspace, settings)]
    else:
        workflows = [
            w
            for w in store.all_workflows()
            if (all_workspaces or w.workspace == workspace) and (name is None or w.name == name)
        ]
    if name is not None and not workflows:
        raise click.ClickException(
            f"no workflow {name!r} in any workspace of {backend_label(settings)}. "
            "List them all with: reconciler get -a"
        )
    documents = [workflow_document(store, w, detail=detail) for w in workflows]
    last = store.last_sync()
    if output != "table":
        emit(
            {
                "workflows": documents,
                "last_sync": None
                if last is None
                else {
                    "revision": last.revision,
                    "result": last.result,
                    "started_at": iso(last.started_at),
                    "finished_at": iso(last.finished_at),
                    "message": last.message,
                },
            },
            output,
        )
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "WORKSPACE",
        "NAME",
        "STATE",
        "LAST RUN",
        "RESULT",
        "NEXT RUN",
        "REVISION",
        "PATH",
    ):
        table.add_column(column)
    for d in documents:
        state = d["state"] + (" (suspended)" if d["suspended"] else "")
        table.add_row(
            d["workspace"],
            d["name"],
            state,
            d["last_run"] or "-",
            d["result"] or "-",
            "-" if d["next_run"] is None else d["next_run"][:16].replace("T", " ") + "Z",
            d["revision"][:12],
            d["path"],
        )
    if documents:
        stdout.print(table)
    else:
        scope = "any workspace" if all_workspaces else f"workspace {workspace!r}"
        stderr.print(
            f"no workflows in {scope} of {backend_label(settings)}; "
            + (
                "apply the manifests with: reconciler sync --repo REPO"
                if all_workspaces
                else "every workspace: reconciler get -a"
            )
        )
    if detail:
        for d in documents:
            stdout.print(f"\n[bold]{d['workspace']}/{d['name']}[/]")
            click.echo(
                yaml.safe_dump(
                    {
                        "spec": d["spec"]["spec"],
                        "images": d["images"],
                        "recent_runs": d["recent_runs"],
                    },
                    sort_keys=False,
                )
            )
    if last is not None:
        stderr.print(
            f"last sync: {last.result} at {when(last.finished_at)}, revision "
            f"{(last.revision or '?')[:12]}" + (f" ({last.message})" if last.message else "")
        )


def name_options(func: Any) -> Any:
    func = click.option(
        "-w", "--workspace", default="public", show_default=True, help="Workspace of the workflow."
    )(func)
    return click.option(
        "-n",
        "--name",
        required=True,
        help="Name of the workflow.",
        shell_complete=complete_workflow_names,
    )(func)


def output_option() -> Callable[[Any], Any]:
    return click.option(
        "-o", "--output", type=OUTPUTS, default="table", show_default=True, help=OUTPUT_HELP
    )


run_option = click.option(
    "--run",
    "run_id",
    help="A run id (default: the latest run).",
    shell_complete=complete_run_ids,
)


# ``dataos-ctl resource VERB -t workflow``: the type is accepted (and only "workflow").
type_option = click.option(
    "-t",
    "--type",
    type=click.Choice(["workflow"]),
    default="workflow",
    hidden=True,
    expose_value=False,
)


def register(cli: click.Group) -> None:
    """Add the lifecycle commands (and the ``resource`` aliases) to the CLI."""

    @cli.command("get", epilog=machine_epilog("get"))
    @settings_options
    @type_option
    @click.option(
        "-n", "--name", help="Only this workflow.", shell_complete=complete_workflow_names
    )
    @click.option(
        "-w", "--workspace", default="public", show_default=True, help="Workspace to list."
    )
    @click.option("-a", "--all-workspaces", is_flag=True, help="List across all workspaces.")
    @click.option("-d", "--detail", is_flag=True, help="Show the spec, images and recent runs.")
    @output_option()
    def get(
        name: str | None,
        workspace: str,
        all_workspaces: bool,
        detail: bool,
        output: str,
        **flags: Any,
    ) -> None:
        """Workflows with state, last run, result, next run and applied revision."""
        _get(name, workspace, all_workspaces, detail, output, flags)

    @cli.group("runtime")
    def runtime() -> None:
        """Runtime details of a workflow's runs."""

    @runtime.command("get", epilog=machine_epilog("runtime get"))
    @settings_options
    @type_option
    @name_options
    @run_option
    @output_option()
    def runtime_get(
        name: str, workspace: str, run_id: str | None, output: str, **flags: Any
    ) -> None:
        """The DAG of a run with each step's state, times and exit code."""
        _runtime(name, workspace, run_id, output, flags)

    @cli.command("log")
    @settings_options
    @type_option
    @name_options
    @click.option("--container", "step", help="Only this step.", shell_complete=complete_step_names)
    @run_option
    @click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
    def log_command(
        name: str, workspace: str, step: str | None, run_id: str | None, follow: bool, **flags: Any
    ) -> None:
        """The logs of a run's steps."""
        _log(name, workspace, step, run_id, follow, flags)

    @cli.command("run")
    @settings_options
    @name_options
    @click.option(
        "--wait", is_flag=True, help="Wait for the run to end; exit 0 only if it succeeded."
    )
    def run_command(name: str, workspace: str, wait: bool, **flags: Any) -> None:
        """Trigger a run now."""
        _run(name, workspace, wait, flags)

    @cli.command("cancel")
    @settings_options
    @name_options
    @click.option(
        "--run",
        "run_id",
        help="A run id (default: every active run).",
        shell_complete=complete_run_ids,
    )
    def cancel(name: str, workspace: str, run_id: str | None, **flags: Any) -> None:
        """Cancel active runs: pending ones at once, running ones once their steps stop."""
        _cancel(name, workspace, run_id, flags)

    @cli.command("suspend")
    @settings_options
    @name_options
    def suspend(name: str, workspace: str, **flags: Any) -> None:
        """Stop scheduling a workflow (runs in progress finish)."""
        _suspend(name, workspace, True, flags)

    @cli.command("resume")
    @settings_options
    @name_options
    def resume(name: str, workspace: str, **flags: Any) -> None:
        """Schedule a suspended workflow again, from now on (missed slots are not caught up)."""
        _suspend(name, workspace, False, flags)

    @cli.command("delete")
    @settings_options
    @type_option
    @name_options
    @click.option("--force", is_flag=True, help="Delete even though git still has the manifest.")
    def delete(name: str, workspace: str, force: bool, **flags: Any) -> None:
        """Delete a workflow from the backend. The GitOps way is to delete its manifest from git."""
        _delete(name, workspace, force, flags)

    @cli.command("next-runs", epilog=machine_epilog("next-runs"))
    @settings_options
    @click.option(
        "-n", "--name", help="An applied workflow.", shell_complete=complete_workflow_names
    )
    @click.option("-w", "--workspace", default="public", show_default=True)
    @click.option(
        "--file",
        "file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A manifest file instead.",
    )
    @click.option("--from", "start", help="ISO-8601 time to count from (default: now).")
    @click.option("--count", default=5, show_default=True, type=click.IntRange(1, 1000))
    @output_option()
    def next_runs(
        name: str | None,
        workspace: str,
        file: Path | None,
        start: str | None,
        count: int,
        output: str,
        **flags: Any,
    ) -> None:
        """The coming slot times of a workflow, in its time zone."""
        _next_runs(name, workspace, file, start, count, output, flags)

    @cli.command("events", epilog=machine_epilog("events"))
    @settings_options
    @click.option(
        "-n", "--name", help="Only this workflow.", shell_complete=complete_workflow_names
    )
    @click.option("-w", "--workspace", default="public", show_default=True)
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
    @output_option()
    def events(name: str | None, workspace: str, limit: int, output: str, **flags: Any) -> None:
        """The event log: applies, runs, skipped slots, failures."""
        _events(name, workspace, limit, output, flags)

    @cli.group("secret")
    def secret() -> None:
        """The local backend's secret store (values are never printed)."""

    @secret.command("set")
    @settings_options
    @click.argument("secret_id")
    @click.argument("pairs", nargs=-1, required=True)
    def secret_set(secret_id: str, pairs: tuple[str, ...], **flags: Any) -> None:
        """Set keys of a secret: KEY=VALUE, KEY=@FILE (read a file) or KEY=- (read stdin)."""
        _secret_set(secret_id, pairs, flags)

    @secret.command("list", epilog=machine_epilog("secret list"))
    @settings_options
    @output_option()
    def secret_list(output: str, **flags: Any) -> None:
        """Secret ids and their key names (never the values)."""
        _secret_list(output, flags)

    @secret.command("delete")
    @settings_options
    @click.argument("secret_id")
    @click.argument("keys", nargs=-1)
    def secret_delete(secret_id: str, keys: tuple[str, ...], **flags: Any) -> None:
        """Delete a secret, or only some of its keys."""
        _secret_delete(secret_id, keys, flags)

    _register_resource_aliases(
        cli, get=get, runtime_get=runtime_get, log=log_command, delete=delete
    )
    cli.add_command(completion_command())


def _register_resource_aliases(
    cli: click.Group,
    *,
    get: click.Command,
    runtime_get: click.Command,
    log: click.Command,
    delete: click.Command,
) -> None:
    """``reconciler resource VERB -t workflow ...``: the seed's ``dataos-ctl`` spellings,
    the same command objects as ``get``, ``runtime get``, ``log`` and ``delete``."""

    @cli.group("resource")
    def resource() -> None:
        """dataos-ctl style aliases: resource get|runtime get|log|delete|apply -t workflow."""

    @resource.group("runtime")
    def resource_runtime() -> None:
        """Runtime details."""

    resource.add_command(get, "get")
    resource_runtime.add_command(runtime_get, "get")
    resource.add_command(log, "log")
    resource.add_command(delete, "delete")

    @resource.command("apply")
    @click.option(
        "-f",
        "--file",
        "file",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    )
    def resource_apply(file: Path) -> None:
        """Validate a manifest; applying it is a commit to the manifests repository."""
        result = load_manifest_file(str(file), file.read_bytes(), workspace="public", variables={})
        for error in result.errors:
            click.echo(error.render())
        if result.errors:
            sys.exit(1)
        names = ", ".join(w.manifest.name for w in result.workflows)
        stderr.print(
            f"{file}: valid ({names}). This is a GitOps reconciler: commit the file to the "
            "manifests repository and the daemon applies it (or run `reconciler sync`)."
        )


# -- runtime, log -------------------------------------------------------------


def unknown_run(store: RunBackend, workflow: AppliedWorkflow, run_id: str) -> str:
    """What to say about a run id that is not one of this workflow's runs."""
    ws = ws_flag(workflow.workspace)
    other = store.get_run(workflow.workspace, run_id)
    if other is not None:
        return (
            f"run {run_id!r} belongs to workflow {other.name!r}, not {workflow.name!r}: "
            f"reconciler runtime get -n {other.name}{ws} --run {run_id}"
        )
    recent = store.runs_of(workflow.key, limit=5)
    if not recent:
        return (
            f"no run {run_id!r} of workflow {workflow.key}: it has no runs yet; start one "
            f"with: reconciler run -n {workflow.name}{ws} --wait"
        )
    listed = ", ".join(f"{r.run_id} ({r.state})" for r in recent)
    return (
        f"no run {run_id!r} of workflow {workflow.key}. Its recent runs: {listed}. "
        f"Leave out --run for the latest; the last 10: reconciler get -n {workflow.name}{ws} -d"
    )


def pick_run(store: RunBackend, workflow: AppliedWorkflow, run_id: str | None) -> Run:
    if run_id is not None:
        run = store.get_run(workflow.workspace, run_id)
        if run is None or run.name != workflow.name:
            raise click.ClickException(unknown_run(store, workflow, run_id))
        return run
    recent = store.runs_of(workflow.key, limit=20)
    runs = [r for r in recent if r.state != "skipped"]
    if not runs:
        ws = ws_flag(workflow.workspace)
        skipped = (
            f" (its last {len(recent)} slot(s) were skipped: {recent[0].reason or 'no reason'}; "
            f"see reconciler events -n {workflow.name}{ws})"
            if recent
            else ""
        )
        raise click.ClickException(
            f"workflow {workflow.name!r} has no runs yet{skipped}; start one with: "
            f"reconciler run -n {workflow.name}{ws} --wait"
        )
    return runs[0]


def _runtime(
    name: str, workspace: str, run_id: str | None, output: str, flags: dict[str, Any]
) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    run = pick_run(store, workflow, run_id)
    if output != "table":
        emit(run_summary(run), output)
        return
    images = step_images(run.spec)
    stdout.print(
        f"[bold]{workflow.workspace}/{workflow.name}[/] run [bold]{run.run_id}[/]: {run.state}"
        + (f" ({run.reason})" if run.reason else "")
    )
    stdout.print(
        f"trigger {run.trigger} by {run.requested_by}; revision {run.revision[:12]}; "
        f"started {when(run.started_at)}; finished {when(run.finished_at)}; "
        f"duration {seconds(run.duration_seconds)}"
    )
    stdout.print("DAG: " + dag_text(run))
    table = Table(box=None, header_style="bold")
    for column in (
        "STEP",
        "DEPENDS",
        "STATE",
        "STARTED",
        "FINISHED",
        "DURATION",
        "EXIT",
        "IMAGE",
        "REASON",
    ):
        table.add_column(column)
    for step in run.steps:
        table.add_row(
            step.name,
            ", ".join(step.depends) or "-",
            step.state,
            when(step.started_at),
            when(step.finished_at),
            seconds(step.duration_seconds),
            "-" if step.exit_code is None else str(step.exit_code),
            images.get(step.name) or "-",
            step.reason or "",
        )
    stdout.print(table)


def dag_text(run: Run) -> str:
    """``extract → validate → publish`` for a chain; ``a, b → c`` style lines otherwise."""
    steps = run.steps
    chain = all(
        len(s.depends) == (0 if i == 0 else 1) and (i == 0 or s.depends[0] == steps[i - 1].name)
        for i, s in enumerate(steps)
    )
    if chain:
        return " → ".join(s.name for s in steps)
    return "; ".join(f"{', '.join(s.depends)} → {s.name}" if s.depends else s.name for s in steps)


def _log(
    name: str,
    workspace: str,
    step: str | None,
    run_id: str | None,
    follow: bool,
    flags: dict[str, Any],
) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    run = pick_run(store, workflow, run_id)
    if step is not None and step not in {s.name for s in run.steps}:
        _no_step(run, step)
    runner = build_runner(settings)
    offsets: dict[str, int] = {}
    while True:
        for s in run.steps:
            if step is not None and s.name != step:
                continue
            data = runner.read_log(run.workspace, run.run_id, s.name) or b""
            start = offsets.get(s.name, 0)
            if len(data) > start:
                if step is None and start == 0:
                    click.echo(f"==> {s.name} ({s.state}) <==")
                click.echo(data[start:].decode("utf-8", "replace"), nl=False)
                offsets[s.name] = len(data)
        if not follow or not run.active:
            return
        time.sleep(0.5)
        refreshed = store.get_run(run.workspace, run.run_id)
        run = refreshed if refreshed is not None else run


def _no_step(run: Run, step: str) -> NoReturn:
    names = [s.name for s in run.steps]
    close = difflib.get_close_matches(step, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise click.ClickException(
        f"run {run.run_id} has no step {step!r}{hint}; its steps: {', '.join(names)}. "
        "Leave out --container to print every step's log."
    )


# -- run, cancel ------------------------------------------------------------------


def requester() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _run(name: str, workspace: str, wait: bool, flags: dict[str, Any]) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    ws = ws_flag(workflow.workspace)
    try:
        run = trigger_run(store, workflow, requested_by=requester(), now=datetime.now(UTC))
    except TriggerRefused as exc:
        raise click.ClickException(
            f"{exc}; wait for it or cancel it: reconciler cancel -n {name}{ws}"
        ) from exc
    stderr.print(f"run [bold]{run.run_id}[/] of {workflow.key} created")
    click.echo(run.run_id)
    if not wait:
        return
    lock = StateLock(settings.state_dir)
    with WaitProgress(stderr) as progress:
        if settings.backend == "kubernetes":
            progress.note("the daemon in the cluster runs it; waiting")
        elif lock.acquire():
            try:
                progress.note("no daemon holds this state directory: running the steps here")
                runner = build_runner(settings)
                executor = Executor(store, runner, clock=SystemClock())
                executor.recover()
                executor.notify()
                while True:
                    executor.step(wait=0.2)
                    current = store.get_run(run.workspace, run.run_id)
                    if current is not None:
                        progress.update(current)
                        if not current.active:
                            break
            finally:
                lock.release()
        else:
            progress.note(f"the daemon (pid {lock.holder()}) runs it; waiting")
        final = _wait_for(store, run, progress)
    colour = "green" if final.state == "succeeded" else "red"
    stderr.print(
        f"run {final.run_id}: [{colour}]{final.state}[/]"
        + (f" ({final.reason})" if final.reason else "")
    )
    stderr.print(f"details: reconciler runtime get -n {name}{ws} --run {final.run_id}")
    sys.exit(0 if final.state == "succeeded" else 1)


def _wait_for(store: RunBackend, run: Run, progress: WaitProgress | None = None) -> Run:
    while True:
        current = store.get_run(run.workspace, run.run_id)
        if current is None:
            raise click.ClickException(
                f"run {run.run_id} disappeared: its workflow was deleted (reconciler delete "
                f"--force, or its manifest left git); what happened: reconciler events -n "
                f"{run.name}{ws_flag(run.workspace)}"
            )
        if progress is not None:
            progress.update(current)
        if not current.active:
            return current
        time.sleep(0.3)


def elapsed_text(value: float) -> str:
    """``12s``, ``4m05s``, ``1h02m``."""
    whole = int(value)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def describe_progress(run: Run) -> str:
    """``running extract, validate (1/4 steps done)``; ``pending (waiting: ...)``."""
    if run.state == "pending":
        return "pending" + (f" ({run.reason})" if run.reason else "")
    if run.state != "running":
        return run.state
    running = [s.name for s in run.steps if s.state == "running"]
    done = sum(1 for s in run.steps if s.state not in ("pending", "running"))
    doing = f"running {', '.join(running)}" if running else "running"
    cancelling = ", cancelling" if run.cancel_requested else ""
    return f"{doing} ({done}/{len(run.steps)} steps done{cancelling})"


class WaitProgress:
    """What ``run --wait`` shows on stderr while it waits.

    On a terminal, a spinner naming the running steps and the time elapsed; off
    one (CI logs, pipes), a plain line whenever that changes and every
    ``every`` seconds while it does not, so a log shows the run is still alive.
    """

    def __init__(
        self,
        console: Console,
        *,
        live: bool | None = None,
        every: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.every = every
        self.clock = clock
        self.started = clock()
        self._status: Status | None = None
        self._last: tuple[str, float] | None = None

    def __enter__(self) -> WaitProgress:
        if self.live:
            self._status = self.console.status(Text("waiting for the run"), spinner="dots")
            self._status.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def note(self, message: str) -> None:
        """A message that stays (printed above the spinner on a terminal)."""
        self.console.print(message, markup=False, highlight=False)

    def update(self, run: Run) -> None:
        now = self.clock()
        what = describe_progress(run)
        elapsed = elapsed_text(now - self.started)
        if self._status is not None:
            self._status.update(Text(f"run {run.run_id}: {what} · {elapsed}"))
            return
        if not run.active:
            return  # the final state is printed once, by the caller
        if self._last is None or self._last[0] != what or now - self._last[1] >= self.every:
            self.console.print(
                f"[{elapsed}] run {run.run_id}: {what}", markup=False, highlight=False
            )
            self._last = (what, now)


def _cancel(name: str, workspace: str, run_id: str | None, flags: dict[str, Any]) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    targets = (
        [pick_run(store, workflow, run_id)]
        if run_id
        else store.runs_of(workflow.key, states=["pending", "running"])
    )
    cancelled = [
        r.run_id
        for r in targets
        if store.request_cancel(r.workspace, r.run_id, reason=f"cancelled by {requester()}")
    ]
    if not cancelled:
        raise click.ClickException(nothing_to_cancel(store, workflow, run_id))
    for run_id_ in cancelled:
        store.add_event(
            workflow.key, run_id_, "RunCancelRequested", f"cancel requested by {requester()}"
        )
        click.echo(f"cancel requested: {run_id_}")


def nothing_to_cancel(store: RunBackend, workflow: AppliedWorkflow, run_id: str | None) -> str:
    ws = ws_flag(workflow.workspace)
    active = store.runs_of(workflow.key, states=["pending", "running"])
    others = (
        f"; active now: {', '.join(r.run_id for r in active)} "
        f"(reconciler cancel -n {workflow.name}{ws} cancels them all)"
        if active
        else ""
    )
    if run_id is not None:
        run = store.get_run(workflow.workspace, run_id)
        state = run.state if run is not None else "gone"
        return f"run {run_id} is already {state}: nothing to cancel{others}"
    latest = store.runs_of(workflow.key, limit=1)
    last = f" (the latest, {latest[0].run_id}, is {latest[0].state})" if latest else ""
    return (
        f"no pending or running run of {workflow.key} to cancel{last}; "
        f"to stop future runs: reconciler suspend -n {workflow.name}{ws}"
    )


def _suspend(name: str, workspace: str, suspended: bool, flags: dict[str, Any]) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    if not suspended and workflow.suspended:
        resume_from_now(store, workflow, now=datetime.now(UTC))
    store.set_suspended(workflow.key, suspended)
    store.add_event(
        workflow.key, None, "Suspended" if suspended else "Resumed", f"by {requester()}"
    )
    click.echo(f"{workflow.key} {'suspended' if suspended else 'resumed'}")


def _delete(name: str, workspace: str, force: bool, flags: dict[str, Any]) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    workflow = find_workflow(store, name, workspace, settings)
    ws = ws_flag(workflow.workspace)
    if not force:
        raise click.ClickException(
            f"{workflow.key} is managed from git ({workflow.path} in {workflow.source}). "
            "Delete the manifest from git and the daemon deletes the workflow; to stop it "
            f"running meanwhile: reconciler suspend -n {name}{ws}. With --force it is deleted "
            "now, but the next sync re-creates it while the manifest is in git."
        )
    for run in store.runs_of(workflow.key, states=["pending", "running"]):
        store.request_cancel(run.workspace, run.run_id, reason="workflow deleted")
    store.delete_workflow(workflow.key, owner=workflow.owner)
    store.add_event(workflow.key, None, "Deleted", f"deleted by {requester()} (--force)")
    click.echo(f"{workflow.key} deleted (it comes back with the next sync if git still has it)")


def _next_runs(
    name: str | None,
    workspace: str,
    file: Path | None,
    start: str | None,
    count: int,
    output: str,
    flags: dict[str, Any],
) -> None:
    if (name is None) == (file is None):
        raise click.UsageError(
            "give one of -n NAME (an applied workflow) or --file FILE (a manifest), "
            f"{'not both' if name else 'not neither'}; e.g. reconciler next-runs -n daily-report"
        )
    if file is not None:
        result = load_manifest_file(str(file), file.read_bytes(), workspace=workspace, variables={})
        for error in result.errors:
            click.echo(error.render(), err=True)
        if not result.workflows:
            raise click.ClickException(
                f"{file} holds no valid workflow; fix the errors above (reconciler validate {file})"
            )
        manifest = result.workflows[0].manifest
        spec: Mapping[str, Any] = DesiredWorkflow.from_manifest(
            manifest, workspace=workspace, path=str(file)
        ).spec
        label, plain_name = f"{workspace}/{manifest.name}", manifest.name
    else:
        settings = resolve_settings(**flags)
        store = open_store(settings)
        assert name is not None
        workflow = find_workflow(store, name, workspace, settings)
        spec, label, plain_name = workflow.spec, str(workflow.key), workflow.name
    schedule = spec["spec"].get("schedule")
    if not schedule:
        raise click.ClickException(
            f"{label} has no spec.schedule: it runs on demand only "
            f"(reconciler run -n {plain_name}{ws_flag(workspace)})"
        )
    try:
        after = datetime.fromisoformat(start) if start else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(
            f"{start!r} is not ISO-8601 (e.g. 2026-11-01T00:00:00-04:00)", param_hint="--from"
        ) from exc
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(schedule["timezone"])
    times = [
        t.astimezone(zone)
        for t in next_fire_times(schedule["crons"], schedule["timezone"], after=after, count=count)
    ]
    if output != "table":
        emit(
            {
                "workflow": label,
                "timezone": schedule["timezone"],
                "crons": list(schedule["crons"]),
                "from": iso(after),
                "next_runs": [t.isoformat() for t in times],
                "next_runs_utc": [iso(t) for t in times],
            },
            output,
        )
        return
    stderr.print(f"{label}: {', '.join(schedule['crons'])} in {schedule['timezone']}")
    for moment in times:
        click.echo(f"{moment.isoformat()}  ({moment.astimezone(UTC):%Y-%m-%d %H:%M}Z)")


def _events(
    name: str | None, workspace: str, limit: int, output: str, flags: dict[str, Any]
) -> None:
    settings = resolve_settings(**flags)
    store = open_store(settings)
    key = None
    if name is not None:
        key = WorkflowKey(f"{workspace}/{name}")
        if store.get_workflow(key) is None:  # a deleted workflow keeps its history
            raise click.ClickException(unknown_workflow(store, name, workspace, settings))
    events = store.events(key=key, limit=limit)
    if output != "table":
        emit(
            [
                {
                    "at": iso(e.at),
                    "workflow": e.key,
                    "run": e.run_id,
                    "kind": e.kind,
                    "message": e.message,
                }
                for e in events
            ],
            output,
        )
        return
    table = Table(box=None, header_style="bold")
    for column in ("TIME", "WORKFLOW", "RUN", "EVENT", "MESSAGE"):
        table.add_column(column)
    for e in events:
        table.add_row(when(e.at), e.key, e.run_id or "-", e.kind, e.message)
    stdout.print(table)


def local_secrets(settings: Settings) -> SecretStore:
    """The local backend's store; on Kubernetes a secret is a Secret the daemon never reads."""
    if settings.backend == "kubernetes":
        raise click.ClickException(
            "on Kubernetes a projection's secret is the Secret named by its id, in the "
            "workflow's workspace (namespace); the reconciler never reads or writes it. "
            "Create it with: kubectl create secret generic ID --from-literal=KEY=VALUE "
            "-n WORKSPACE"
        )
    try:
        return SecretStore(settings.state_dir)
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc


def _secret_set(secret_id: str, pairs: tuple[str, ...], flags: dict[str, Any]) -> None:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(
                f"{pair!r}: write KEY=VALUE, KEY=@FILE or KEY=-", param_hint="PAIRS"
            )
        if value == "-":
            value = sys.stdin.read().rstrip("\n")
        elif value.startswith("@"):
            try:
                value = Path(value[1:]).read_text().rstrip("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise click.BadParameter(
                    f"{key}=@{value[1:]}: cannot read {value[1:]!r} ({exc.__class__.__name__}: "
                    f"{getattr(exc, 'strerror', None) or exc}); give a readable text file",
                    param_hint="PAIRS",
                ) from exc
        values[key] = value
    store = local_secrets(resolve_settings(**flags))
    try:
        store.set(secret_id, values)
    except (ReconcilerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"secret {secret_id}: set {', '.join(sorted(values))}")


def _secret_list(output: str, flags: dict[str, Any]) -> None:
    """Ids and key names only: no value is ever read into the output."""
    store = local_secrets(resolve_settings(**flags))
    try:
        secrets = store.list()
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc
    if output != "table":
        emit(
            {
                "secrets": [
                    {"id": secret_id, "keys": list(keys)} for secret_id, keys in secrets.items()
                ]
            },
            output,
        )
        return
    for secret_id, keys in secrets.items():
        click.echo(f"{secret_id}: {', '.join(keys)}")
    if not secrets:
        stderr.print(
            f"no secrets in {store.directory}; add one with: reconciler secret set ID KEY=VALUE"
        )


def _secret_delete(secret_id: str, keys: tuple[str, ...], flags: dict[str, Any]) -> None:
    store = local_secrets(resolve_settings(**flags))
    try:
        store.unset(secret_id, keys) if keys else store.delete(secret_id)
    except SecretNotFound as exc:
        try:
            existing = sorted(store.list())
        except ReconcilerError:
            existing = []
        known = f"existing secrets: {listing(existing)}" if existing else "the store is empty"
        raise click.ClickException(
            f"secret {secret_id!r} not found in {store.directory}; {known} (reconciler secret list)"
        ) from exc
    except (ReconcilerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"secret {secret_id}: deleted {', '.join(keys)}" if keys else f"secret {secret_id} deleted"
    )
