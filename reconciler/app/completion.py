"""Shell completion: ``reconciler completion bash|zsh|fish``, and what ``-n``/``--run`` complete.

Click drives completion: the shell calls ``reconciler`` again with
``_RECONCILER_COMPLETE=bash_complete`` (``zsh_complete``, ``fish_complete``)
and the words typed so far; ``reconciler completion SHELL`` prints the script
that does so (the same as ``_RECONCILER_COMPLETE=bash_source reconciler``).

The callbacks here read the backend the command line names (``--state-dir``,
``--backend``, ``--config`` and the ``RECONCILER_*`` environment, as the
command itself would). They never fail loudly: anything that goes wrong gives
no candidates, and a local state directory that does not exist yet is not
created (opening the store would create it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from reconciler.adapters.local.store import DB_NAME
from reconciler.core.names import WorkflowKey
from reconciler.ports import RunBackend

PROG_NAME = "reconciler"
COMPLETE_VAR = "_RECONCILER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
# The settings options every backend command has (cli_common.settings_options).
_SETTINGS_PARAMS = ("config_file", "state_dir", "owner", "backend", "kubeconfig", "kube_context")

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def completion_script(root: click.Command, shell: str) -> str:
    """The script that makes ``shell`` complete ``reconciler`` commands, options and names."""
    completion_class = get_completion_class(shell)
    if completion_class is None:  # pragma: no cover - the choice allows known shells only
        raise click.UsageError(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    return completion_class(root, {}, PROG_NAME, COMPLETE_VAR).source()


def _store_for(ctx: click.Context) -> RunBackend | None:
    """The backend this command line names, or None when it is not there (never created)."""
    from reconciler.app.cli_common import resolve_settings
    from reconciler.app.lifecycle import open_store

    flags = {name: ctx.params.get(name) for name in _SETTINGS_PARAMS}
    settings = resolve_settings(**flags)
    if settings.backend == "local" and not (settings.state_dir / DB_NAME).is_file():
        return None
    return open_store(settings)


def _quietly(func: Completer) -> Completer:
    """Completion must never print a traceback into someone's prompt: errors give []."""

    def wrapper(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return func(ctx, param, incomplete)
        except Exception:
            return []

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@_quietly
def complete_workflow_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Applied workflow names starting with ``incomplete``, in ``-w`` (every one with ``-a``)."""
    store = _store_for(ctx)
    if store is None:
        return []
    workspace = ctx.params.get("workspace")
    every = bool(ctx.params.get("all_workspaces")) or not isinstance(workspace, str)
    seen: dict[str, CompletionItem] = {}
    for workflow in store.all_workflows():
        if not workflow.name.startswith(incomplete):
            continue
        if not every and workflow.workspace != workspace:
            continue
        seen.setdefault(
            workflow.name,
            CompletionItem(workflow.name, help=f"{workflow.workspace}, {workflow.state}"),
        )
    return [seen[name] for name in sorted(seen)]


@_quietly
def complete_run_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The recent runs of the workflow named by ``-n``, newest first."""
    name, workspace = ctx.params.get("name"), ctx.params.get("workspace") or "public"
    if not isinstance(name, str):
        return []
    store = _store_for(ctx)
    if store is None:
        return []
    return [
        CompletionItem(run.run_id, help=run.state)
        for run in store.runs_of(WorkflowKey(f"{workspace}/{name}"), limit=20)
        if run.run_id.startswith(incomplete)
    ]


@_quietly
def complete_step_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The steps of ``--run`` if given, else of the workflow named by ``-n`` as applied."""
    name, workspace = ctx.params.get("name"), ctx.params.get("workspace") or "public"
    if not isinstance(name, str):
        return []
    store = _store_for(ctx)
    if store is None:
        return []
    run_id = ctx.params.get("run_id")
    names: list[str] = []
    if isinstance(run_id, str):
        run = store.get_run(workspace, run_id)
        names = [s.name for s in run.steps] if run is not None else []
    else:
        workflow = store.get_workflow(WorkflowKey(f"{workspace}/{name}"))
        if workflow is not None:
            names = [str(s["name"]) for s in workflow.spec["spec"]["dag"]]
    return [CompletionItem(step) for step in names if step.startswith(incomplete)]


def completion_command() -> click.Command:
    @click.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    @click.pass_context
    def completion(ctx: click.Context, shell: str) -> None:
        """Print the shell completion script for SHELL (bash, zsh or fish).

        Commands, options, workflow names (-n), run ids (--run) and step names
        (--container) complete. Install it once:

        \b
          bash:  echo 'eval "$(reconciler completion bash)"' >> ~/.bashrc
          zsh:   echo 'eval "$(reconciler completion zsh)"' >> ~/.zshrc
          fish:  reconciler completion fish > ~/.config/fish/completions/reconciler.fish

        The script is what `_RECONCILER_COMPLETE=bash_source reconciler` prints
        (zsh_source, fish_source). Names are read from the backend that
        --state-dir / --backend / RECONCILER_* name on the line being completed.
        """
        click.echo(completion_script(ctx.find_root().command, shell), nl=False)

    return completion
