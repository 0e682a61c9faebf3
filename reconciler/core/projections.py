"""What a step's environment is made of: projections merged, and the run's default values.

Workflow-level ``use.projection`` applies to every step and a step's own
projection is laid over it (the step wins, key by key). Values stay
templates here; each backend renders them its own way (the local backend
reads its secret store; Kubernetes makes ``secretKeyRef`` env vars).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.core.runs import Run


@dataclass(frozen=True)
class StepEnvironment:
    """The env vars of a step as templates, and the secrets in its scope."""

    variables: tuple[tuple[str, str], ...]  # (key, template value), in order, keys unique
    secrets: Mapping[str, str]  # contextAlias -> secret id

    def secret_ids(self) -> list[str]:
        return sorted(set(self.secrets.values()))


def _projection_parts(
    projection: Mapping[str, Any] | None,
) -> tuple[dict[str, str], dict[str, str]]:
    if not projection:
        return {}, {}
    secrets = {
        str(s.get("contextAlias") or str(s["id"]).replace("-", "_")): str(s["id"])
        for s in projection.get("secrets") or ()
    }
    env = {
        str(v["key"]): str(v["value"])
        for v in (projection.get("projections") or {}).get("envVars") or ()
    }
    return env, secrets


def step_environment(spec: Mapping[str, Any], step: Mapping[str, Any]) -> StepEnvironment:
    """The merged projections of one step (its DAG entry) of a normalized spec."""
    workflow_use = spec["spec"].get("use") or {}
    env, secrets = _projection_parts(workflow_use.get("projection"))
    step_use = (step.get("spec") or {}).get("use") or {}
    step_env, step_secrets = _projection_parts(step_use.get("projection"))
    env.update(step_env)
    secrets.update(step_secrets)
    return StepEnvironment(tuple(env.items()), secrets)


def default_projections(run: Run, step_name: str, *, now: datetime) -> dict[str, str]:
    """Values of ``{{.defaultProjections.*}}`` for one step of one run."""
    scheduled = run.slot or run.created_at or now
    return {
        "dataOsRunId": run.run_id,
        "runId": run.run_id,
        "workflowName": run.name,
        "workspace": run.workspace,
        "stepName": step_name,
        "scheduledTime": scheduled.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sourceRevision": run.revision,
    }
