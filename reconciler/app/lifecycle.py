"""The lifecycle commands, mirroring ``dataos-ctl resource ...``: get, runtime, log, run, cancel...

Each reads or writes the local backend's state directly, so they work with
or without a daemon. ``run --wait`` executes the run itself when no daemon
holds the state directory; otherwise it waits for the daemon to do it. The
seed's spellings work too: ``reconciler resource get -t workflow -n NAME -d``.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from rich.table import Table

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.local.locks import StateLock
from reconciler.adapters.local.secrets import SecretStore
from reconciler.app.cli_common import resolve_settings, settings_options, stderr, stdout
from reconciler.app.running import Executor
from reconciler.app.scheduling import resume_from_now
from reconciler.app.settings import Settings
from reconciler.app.wiring import build_runner, build_store
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import RunId, WorkflowKey
from reconciler.core.runs import Run, new_run
from reconciler.core.slots import manual_run_id, next_fire_times
from reconciler.core.workflows import AppliedWorkflow, DesiredWorkflow
from reconciler.ports import ReconcilerError, RunBackend

OUTPUTS = click.Choice(["table", "json", "yaml"])


def open_store(settings: Settings) -> RunBackend:
    try:
        return build_store(settings)
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc


def find_workflow(store: RunBackend, name: str, workspace: str) -> AppliedWorkflow:
    workflow = store.get_workflow(WorkflowKey(f"{workspace}/{name}"))
    if workflow is None or workflow.state == "deleted":
        known = [w.name for w in store.all_workflows() if w.workspace == workspace]
        hint = f" Known in {workspace}: {', '.join(known)}." if known else ""
        raise click.ClickException(
            f"no workflow {name!r} in workspace {workspace!r}.{hint} "
            "List every workspace with: reconciler get -a"
        )
    return workflow


def emit(document: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def next_run(workflow: AppliedWorkflow, now: datetime) -> datetime | None:
    schedule = workflow.spec["spec"].get("schedule")
    if not schedule or workflow.suspended:
        return None
    upcoming = next_fire_times(schedule["crons"], schedule["timezone"], after=now, count=1)
    return upcoming[0] if upcoming else None


def run_summary(run: Run) -> dict[str, Any]:
    return {
        "run": run.run_id,
        "state": run.state,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "slot": run.slot.isoformat() if run.slot else None,
        "revision": run.revision,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "reason": run.reason,
        "steps": [
            {
                "name": s.name,
                "depends": list(s.depends),
                "state": s.state,
                "started_at": s.started_at.isoformat() if s.started_at else None,
                "finished_at": s.finished_at.isoformat() if s.finished_at else None,
                "exit_code": s.exit_code,
                "reason": s.reason,
            }
            for s in run.steps
        ],
    }


def workflow_document(
    store: RunBackend, workflow: AppliedWorkflow, *, detail: bool
) -> dict[str, Any]:
    now = datetime.now(UTC)
    last = store.runs_of(workflow.key, limit=1)
    upcoming = next_run(workflow, now)
    document: dict[str, Any] = {
        "workspace": workflow.workspace,
        "name": workflow.name,
        "state": workflow.state,
        "suspended": workflow.suspended,
        "last_run": last[0].run_id if last else None,
        "result": last[0].state if last else None,
        "next_run": upcoming.isoformat() if upcoming else None,
        "revision": workflow.revision,
        "path": workflow.path,
        "source": workflow.source,
        "owner": workflow.owner,
        "updated_at": workflow.updated_at.isoformat(),
    }
    if detail:
        document["spec"] = dict(workflow.spec)
        document["images"] = {
            s["name"]: (s.get("spec") or {}).get("stackSpec", {}).get("image")
            for s in workflow.spec["spec"]["dag"]
        }
        document["recent_runs"] = [
            {"run": r.run_id, "state": r.state, "trigger": r.trigger, "reason": r.reason}
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
        workflows = [find_workflow(store, name, workspace)]
    else:
        workflows = [
            w
            for w in store.all_workflows()
            if (all_workspaces or w.workspace == workspace) and (name is None or w.name == name)
        ]
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
                    "finished_at": last.finished_at.isoformat(),
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
            (d["next_run"] or "-")[:16].replace("T", " "),
            d["revision"][:12],
            d["path"],
        )
    stdout.print(table)
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
    return click.option("-n", "--name", required=True, help="Name of the workflow.")(func)


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

    @cli.command("get")
    @settings_options
    @type_option
    @click.option("-n", "--name", help="Only this workflow.")
    @click.option(
        "-w", "--workspace", default="public", show_default=True, help="Workspace to list."
    )
    @click.option("-a", "--all-workspaces", is_flag=True, help="List across all workspaces.")
    @click.option("-d", "--detail", is_flag=True, help="Show the spec, images and recent runs.")
    @click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True)
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

    @runtime.command("get")
    @settings_options
    @type_option
    @name_options
    @click.option("--run", "run_id", help="A run id (default: the latest run).")
    @click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True)
    def runtime_get(
        name: str, workspace: str, run_id: str | None, output: str, **flags: Any
    ) -> None:
        """The DAG of a run with each step's state, times and exit code."""
        _runtime(name, workspace, run_id, output, flags)

    @cli.command("log")
    @settings_options
    @type_option
    @name_options
    @click.option("--container", "step", help="Only this step.")
    @click.option("--run", "run_id", help="A run id (default: the latest run).")
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
    @click.option("--run", "run_id", help="A run id (default: every active run).")
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

    @cli.command("next-runs")
    @settings_options
    @click.option("-n", "--name", help="An applied workflow.")
    @click.option("-w", "--workspace", default="public", show_default=True)
    @click.option(
        "--file",
        "file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A manifest file instead.",
    )
    @click.option("--from", "start", help="ISO-8601 time to count from (default: now).")
    @click.option("--count", default=5, show_default=True, type=click.IntRange(1, 1000))
    @click.option(
        "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
    )
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

    @cli.command("events")
    @settings_options
    @click.option("-n", "--name", help="Only this workflow.")
    @click.option("-w", "--workspace", default="public", show_default=True)
    @click.option("--limit", default=50, show_default=True)
    @click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True)
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

    @secret.command("list")
    @settings_options
    def secret_list(**flags: Any) -> None:
        """Secret ids and their key names."""
        store = local_secrets(resolve_settings(**flags))
        for secret_id, keys in store.list().items():
            click.echo(f"{secret_id}: {', '.join(keys)}")

    @secret.command("delete")
    @settings_options
    @click.argument("secret_id")
    @click.argument("keys", nargs=-1)
    def secret_delete(secret_id: str, keys: tuple[str, ...], **flags: Any) -> None:
        """Delete a secret, or only some of its keys."""
        store = local_secrets(resolve_settings(**flags))
        try:
            store.unset(secret_id, keys) if keys else store.delete(secret_id)
        except (ReconcilerError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    _register_resource_aliases(
        cli, get=get, runtime_get=runtime_get, log=log_command, delete=delete
    )


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


def pick_run(store: RunBackend, workflow: AppliedWorkflow, run_id: str | None) -> Run:
    if run_id is not None:
        run = store.get_run(workflow.workspace, run_id)
        if run is None or run.name != workflow.name:
            raise click.ClickException(f"no run {run_id!r} of workflow {workflow.name!r}")
        return run
    runs = [r for r in store.runs_of(workflow.key, limit=20) if r.state != "skipped"]
    if not runs:
        raise click.ClickException(
            f"workflow {workflow.name!r} has no runs yet; start one with: "
            f"reconciler run -n {workflow.name} --wait"
        )
    return runs[0]


def _runtime(
    name: str, workspace: str, run_id: str | None, output: str, flags: dict[str, Any]
) -> None:
    store = open_store(resolve_settings(**flags))
    workflow = find_workflow(store, name, workspace)
    run = pick_run(store, workflow, run_id)
    if output != "table":
        emit(run_summary(run), output)
        return
    images = {
        s["name"]: (s.get("spec") or {}).get("stackSpec", {}).get("image") or "-"
        for s in run.spec["spec"]["dag"]
    }
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
            images.get(step.name, "-"),
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
    workflow = find_workflow(store, name, workspace)
    run = pick_run(store, workflow, run_id)
    if step is not None:
        run.step(step) if step in {s.name for s in run.steps} else _no_step(run, step)
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


def _no_step(run: Run, step: str) -> None:
    names = ", ".join(s.name for s in run.steps)
    raise click.ClickException(f"run {run.run_id} has no step {step!r}; its steps: {names}")


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
    workflow = find_workflow(store, name, workspace)
    now = datetime.now(UTC)
    policy = (workflow.spec["spec"].get("schedule") or {}).get("concurrencyPolicy", "Allow")
    active = store.runs_of(workflow.key, states=["pending", "running"])
    if active and policy == "Forbid":
        raise click.ClickException(
            f"run {active[0].run_id} is still {active[0].state} and concurrencyPolicy is "
            f"Forbid; wait for it or cancel it: reconciler cancel -n {name}"
        )
    run = new_run(
        workspace=workflow.workspace,
        run_id=RunId(manual_run_id(workflow.name, uuid.uuid4().hex)),
        name=workflow.name,
        trigger="manual",
        requested_by=requester(),
        revision=workflow.revision,
        spec=workflow.spec,
        spec_hash=workflow.spec_hash,
        now=now,
    )
    events = [
        (workflow.key, run.run_id, "RunTriggered", f"manual run requested by {run.requested_by}")
    ]
    if active and policy == "Replace":
        for old in active:
            store.request_cancel(old.workspace, old.run_id, reason=f"replaced by run {run.run_id}")
    store.create_runs([run], events=events)
    stderr.print(f"run [bold]{run.run_id}[/] of {workflow.key} created")
    click.echo(run.run_id)
    if not wait:
        return
    lock = StateLock(settings.state_dir)
    if settings.backend == "kubernetes":
        stderr.print("the daemon in the cluster runs it; waiting")
    elif lock.acquire():
        try:
            stderr.print("no daemon holds this state directory: running the steps here")
            runner = build_runner(settings)
            executor = Executor(store, runner, clock=SystemClock())
            executor.recover()
            executor.notify()
            while True:
                executor.step(wait=0.2)
                current = store.get_run(run.workspace, run.run_id)
                if current is not None and not current.active:
                    break
        finally:
            lock.release()
    else:
        stderr.print(f"the daemon (pid {lock.holder()}) runs it; waiting")
    final = _wait_for(store, run)
    colour = "green" if final.state == "succeeded" else "red"
    stderr.print(
        f"run {final.run_id}: [{colour}]{final.state}[/]"
        + (f" ({final.reason})" if final.reason else "")
    )
    stderr.print(f"details: reconciler runtime get -n {name} --run {final.run_id}")
    sys.exit(0 if final.state == "succeeded" else 1)


def _wait_for(store: RunBackend, run: Run) -> Run:
    while True:
        current = store.get_run(run.workspace, run.run_id)
        if current is None:
            raise click.ClickException(f"run {run.run_id} disappeared")
        if not current.active:
            return current
        time.sleep(0.3)


def _cancel(name: str, workspace: str, run_id: str | None, flags: dict[str, Any]) -> None:
    store = open_store(resolve_settings(**flags))
    workflow = find_workflow(store, name, workspace)
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
        raise click.ClickException(f"no active run of {workflow.key} to cancel")
    for run_id_ in cancelled:
        store.add_event(
            workflow.key, run_id_, "RunCancelRequested", f"cancel requested by {requester()}"
        )
        click.echo(f"cancel requested: {run_id_}")


def _suspend(name: str, workspace: str, suspended: bool, flags: dict[str, Any]) -> None:
    store = open_store(resolve_settings(**flags))
    workflow = find_workflow(store, name, workspace)
    if not suspended and workflow.suspended:
        resume_from_now(store, workflow, now=datetime.now(UTC))
    store.set_suspended(workflow.key, suspended)
    store.add_event(
        workflow.key, None, "Suspended" if suspended else "Resumed", f"by {requester()}"
    )
    click.echo(f"{workflow.key} {'suspended' if suspended else 'resumed'}")


def _delete(name: str, workspace: str, force: bool, flags: dict[str, Any]) -> None:
    store = open_store(resolve_settings(**flags))
    workflow = find_workflow(store, name, workspace)
    if not force:
        raise click.ClickException(
            f"{workflow.key} is managed from git ({workflow.path} in {workflow.source}). "
            "Delete the manifest from git and the daemon deletes the workflow; to stop it "
            f"running meanwhile: reconciler suspend -n {name}. With --force it is deleted now, "
            "but the next sync re-creates it while the manifest is in git."
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
        raise click.UsageError("give either -n NAME or --file FILE")
    if file is not None:
        result = load_manifest_file(str(file), file.read_bytes(), workspace=workspace, variables={})
        for error in result.errors:
            click.echo(error.render(), err=True)
        if not result.workflows:
            raise click.ClickException(f"{file} holds no valid workflow")
        spec = DesiredWorkflow.from_manifest(
            result.workflows[0].manifest, workspace=workspace, path=str(file)
        ).spec
        label = result.workflows[0].manifest.name
    else:
        store = open_store(resolve_settings(**flags))
        assert name is not None
        workflow = find_workflow(store, name, workspace)
        spec, label = workflow.spec, workflow.key
    schedule = spec["spec"].get("schedule")
    if not schedule:
        raise click.ClickException(f"{label} has no schedule; it runs on demand only")
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
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "workflow": str(label),
                    "timezone": schedule["timezone"],
                    "next_runs": [t.isoformat() for t in times],
                },
                indent=2,
            )
        )
        return
    stderr.print(f"{label}: {', '.join(schedule['crons'])} in {schedule['timezone']}")
    for moment in times:
        click.echo(f"{moment.isoformat()}  ({moment.astimezone(UTC):%Y-%m-%d %H:%M}Z)")


def _events(
    name: str | None, workspace: str, limit: int, output: str, flags: dict[str, Any]
) -> None:
    store = open_store(resolve_settings(**flags))
    key = None if name is None else find_workflow(store, name, workspace).key
    events = store.events(key=key, limit=limit)
    if output != "table":
        emit(
            [
                {
                    "at": e.at.isoformat(),
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
    return SecretStore(settings.state_dir)


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
            value = Path(value[1:]).read_text().rstrip("\n")
        values[key] = value
    store = local_secrets(resolve_settings(**flags))
    try:
        store.set(secret_id, values)
    except (ReconcilerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"secret {secret_id}: set {', '.join(sorted(values))}")
