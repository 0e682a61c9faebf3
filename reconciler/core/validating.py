"""Rules that span fields of a Workflow, each reported at its own place.

The models check single fields; this module checks what needs several:
the DAG (unique names, known dependencies, no self-dependency, no cycles),
requests within limits, volumes, stacks and their ``stackSpec``, and the
scope of secret aliases used by projection templates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.core import dags, quantities, templates
from reconciler.core.manifests import Projection, Resources, Workflow
from reconciler.core.problems import Finding, Loc
from reconciler.core.stacks import find_stack, unknown_stack_message
from reconciler.core.suggestions import findings_from_validation_error


def check_workflow(workflow: Workflow) -> list[Finding]:
    """Every cross-field problem of a Workflow whose fields are each valid."""
    findings: list[Finding] = []
    findings += _check_dag(workflow)
    workflow_aliases, found = _check_projection(
        workflow.spec.use.projection if workflow.spec.use else None,
        ("spec", "use", "projection"),
        inherited=frozenset(),
    )
    findings += found
    for index, step in enumerate(workflow.spec.dag):
        loc: Loc = ("spec", "dag", index, "spec")
        spec = step.spec
        if spec.resources is not None:
            findings += _check_resources(spec.resources, (*loc, "resources"))
        if spec.use is not None:
            findings += _check_volumes(spec.use.volumes, (*loc, "use", "volumes"))
            _, found = _check_projection(
                spec.use.projection, (*loc, "use", "projection"), inherited=workflow_aliases
            )
            findings += found
        findings += check_stack(spec.stack, spec.stack_spec, loc)
    return findings


def _check_dag(workflow: Workflow) -> list[Finding]:
    findings: list[Finding] = []
    first_index: dict[str, int] = {}
    for index, step in enumerate(workflow.spec.dag):
        if step.name in first_index:
            findings.append(
                Finding(
                    ("spec", "dag", index, "name"),
                    f"step name {step.name!r} is already used by spec.dag"
                    f"[{first_index[step.name]}]; step names must be unique",
                )
            )
        else:
            first_index[step.name] = index
    for index, step in enumerate(workflow.spec.dag):
        seen: set[str] = set()
        for position, upstream in enumerate(step.depends):
            loc: Loc = ("spec", "dag", index, "depends", position)
            if upstream == step.name:
                findings.append(Finding(loc, f"step {step.name!r} cannot depend on itself"))
            elif upstream not in first_index:
                known = ", ".join(first_index) or "none"
                findings.append(
                    Finding(loc, f"unknown step {upstream!r} in depends; steps are: {known}")
                )
            elif upstream in seen:
                findings.append(Finding(loc, f"{upstream!r} is listed twice in depends"))
            seen.add(upstream)
    graph = {step.name: [d for d in step.depends if d != step.name] for step in workflow.spec.dag}
    cycle = dags.find_cycle(graph)
    if cycle is not None:
        findings.append(
            Finding(
                ("spec", "dag", first_index[cycle[0]], "depends"),
                f"dependency cycle: {' -> '.join(cycle)}; a DAG cannot loop back on itself",
            )
        )
    return findings


def _check_resources(resources: Resources, loc: Loc) -> list[Finding]:
    findings: list[Finding] = []
    if resources.requests is None or resources.limits is None:
        return findings
    for kind in ("cpu", "memory"):
        request = getattr(resources.requests, kind)
        limit = getattr(resources.limits, kind)
        if request is None or limit is None:
            continue
        if quantities.parse_quantity(request) > quantities.parse_quantity(limit):
            findings.append(
                Finding(
                    (*loc, "requests", kind),
                    f"request {request} is more than the limit {limit}; "
                    f"lower the request or raise resources.limits.{kind}",
                )
            )
    return findings


def _check_volumes(volumes: Iterable[Any], loc: Loc) -> list[Finding]:
    findings: list[Finding] = []
    ids: set[str] = set()
    directories: set[str] = set()
    for index, volume in enumerate(volumes):
        if volume.id in ids:
            findings.append(
                Finding((*loc, index, "id"), f"volume {volume.id!r} is mounted twice in this step")
            )
        if volume.directory in directories:
            findings.append(
                Finding(
                    (*loc, index, "directory"),
                    f"{volume.directory} is already a mount point in this step",
                )
            )
        ids.add(volume.id)
        directories.add(volume.directory)
    return findings


def _check_projection(
    projection: Projection | None, loc: Loc, *, inherited: frozenset[str]
) -> tuple[frozenset[str], list[Finding]]:
    """Check a projection; return the secret aliases in scope below it, and findings."""
    if projection is None:
        return inherited, []
    findings: list[Finding] = []
    local: set[str] = set()
    for index, secret in enumerate(projection.secrets):
        if secret.alias in local:
            findings.append(
                Finding(
                    (*loc, "secrets", index, "contextAlias"),
                    f"contextAlias {secret.alias!r} is declared twice; aliases must be unique",
                )
            )
        local.add(secret.alias)
    aliases = inherited | local
    keys: set[str] = set()
    for index, env in enumerate(projection.projections.env_vars):
        env_loc: Loc = (*loc, "projections", "envVars", index)
        if env.key in keys:
            findings.append(Finding((*env_loc, "key"), f"env var {env.key!r} is set twice"))
        keys.add(env.key)
        for message in templates.check_template(env.value, secret_aliases=aliases):
            findings.append(Finding((*env_loc, "value"), message))
    return aliases, findings


def check_stack(stack: str | None, stack_spec: dict[str, Any] | None, loc: Loc) -> list[Finding]:
    """The stack must be known, and its stackSpec valid for it."""
    if stack is None:
        if stack_spec is not None:
            return [
                Finding(
                    (*loc, "stackSpec"),
                    "stackSpec is set but stack is not; add stack: NAME",
                    at_key=True,
                )
            ]
        return []
    found = find_stack(stack)
    if found is None:
        return [Finding((*loc, "stack"), unknown_stack_message(stack))]
    try:
        found.spec_model.model_validate(stack_spec or {})
    except ValidationError as exc:
        return findings_from_validation_error(exc, found.spec_model, prefix=(*loc, "stackSpec"))
    return []


def parse_stack_spec(stack: str, stack_spec: dict[str, Any] | None) -> BaseModel:
    """The typed stackSpec of a validated step."""
    found = find_stack(stack)
    if found is None:
        raise KeyError(unknown_stack_message(stack))
    return found.spec_model.model_validate(stack_spec or {})
