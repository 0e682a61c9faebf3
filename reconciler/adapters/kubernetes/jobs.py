"""A step of a run as a ``batch/v1`` Job, and a Job's outcome as a step result.

Pure functions. The pod runs the ``container`` stack's ``image`` with its
``command`` and ``arguments``; ``resources``, ``runAsUser`` and
``use.volumes`` (a PVC per volume id) come from the step; ``compute`` picks
a node profile (nodeSelector, tolerations) from the daemon's config.

Projections become env vars without the daemon ever reading a secret: a
value that is exactly one ``{{.secrets.ALIAS.KEY}}`` is a ``secretKeyRef``;
a value mixing text and secrets gets one helper var per secret and
``$(VAR)`` expansion, which the kubelet performs. Literal ``$(`` in values,
commands and arguments is escaped as ``$$(``, so a step behaves as on the
local backend (where no expansion happens).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.adapters.kubernetes.objects import (
    API_VERSION,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    OWNER,
    RUN,
    STEP,
    WORKFLOW,
)
from reconciler.core.templates import DefaultRef, SecretRef, parse_template
from reconciler.ports import StepLaunch, TerminalError

Obj = dict[str, Any]
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class ComputeProfile:
    """Where a ``compute`` name puts a step's pod."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


def _dns_label(text: str, *, limit: int) -> str:
    label = _NOT_DNS.sub("-", text.lower()).strip("-")
    return label[:limit].rstrip("-") or "x"


def job_name(run_id: str, step: str) -> str:
    """``<run id>-<step>`` cut to fit, plus 10 hex chars of a hash: at most 63 characters."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:10]
    return f"{_dns_label(f'{run_id}-{step}', limit=52)}-{digest}"


def container_name(step: str) -> str:
    return _dns_label(step, limit=63)


def escape(text: str) -> str:
    """Keep the kubelet from expanding ``$(X)`` in literal text."""
    return text.replace("$(", "$$(")


def step_env(launch: StepLaunch, stack_env: Mapping[str, Any]) -> list[Obj]:
    """The container's env: the stack's env, then the projections (secrets by reference)."""
    env: list[Obj] = [{"name": str(k), "value": escape(str(v))} for k, v in stack_env.items()]
    helpers = 0
    for key, template in launch.environment.variables:
        parts = parse_template(template)
        secrets = [p.ref for p in parts if isinstance(p.ref, SecretRef)]
        if len(parts) == 1 and len(secrets) == 1:
            env.append({"name": key, "valueFrom": _secret_ref(launch, secrets[0])})
            continue
        value = []
        for part in parts:
            if part.ref is None:
                value.append(escape(part.text))
            elif isinstance(part.ref, DefaultRef):
                value.append(escape(launch.defaults[part.ref.key]))
            else:
                helper = f"RECONCILER_SECRET_{helpers}"
                helpers += 1
                env.append({"name": helper, "valueFrom": _secret_ref(launch, part.ref)})
                value.append(f"$({helper})")
        env.append({"name": key, "value": "".join(value)})
    return env


def _secret_ref(launch: StepLaunch, ref: SecretRef) -> Obj:
    try:
        secret = launch.environment.secrets[ref.alias]
    except KeyError:
        raise TerminalError(
            f"step {launch.step!r}: secret alias {ref.alias!r} is not declared in scope"
        ) from None
    return {"secretKeyRef": {"name": secret, "key": ref.key}}


def job_object(
    launch: StepLaunch,
    *,
    owner: str,
    run_uid: str | None,
    compute: Mapping[str, ComputeProfile],
    ttl: int | None = None,
) -> Obj:
    """The Job of one step of one run; TerminalError when the step cannot run here."""
    run, name = launch.run, launch.step
    entry = run.dag_entry(name)
    spec: Mapping[str, Any] = entry.get("spec") or {}
    stack_spec: Mapping[str, Any] = spec.get("stackSpec") or {}
    image = stack_spec.get("image")
    if not image:
        raise TerminalError(
            f"step {name!r} has no stackSpec.image: a Kubernetes Job needs an image; add one"
        )
    compute_name = str(spec.get("compute") or "runnable-default")
    if compute_name not in compute:
        known = ", ".join(sorted(compute)) or "none"
        raise TerminalError(
            f"step {name!r} asks for compute {compute_name!r}, which the daemon's config does "
            f"not define (known: {known}); add it under `compute:` in the config"
        )
    profile = compute[compute_name]
    container: Obj = {
        "name": container_name(name),
        "image": str(image),
        "env": step_env(launch, stack_spec.get("env") or {}),
    }
    if stack_spec.get("command"):
        container["command"] = [escape(str(c)) for c in stack_spec["command"]]
    if stack_spec.get("arguments"):
        container["args"] = [escape(str(a)) for a in stack_spec["arguments"]]
    if stack_spec.get("workingDir"):
        container["workingDir"] = str(stack_spec["workingDir"])
    resources = _resources(spec.get("resources"))
    if resources:
        container["resources"] = resources
    if spec.get("runAsUser") is not None:
        container["securityContext"] = {"runAsUser": int(spec["runAsUser"])}
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for index, volume in enumerate((spec.get("use") or {}).get("volumes") or ()):
        read_only = bool(volume.get("readOnly"))
        volumes.append(
            {
                "name": f"volume-{index}",
                "persistentVolumeClaim": {"claimName": str(volume["id"]), "readOnly": read_only},
            }
        )
        mounts.append(
            {
                "name": f"volume-{index}",
                "mountPath": str(volume["directory"]),
                "readOnly": read_only,
            }
        )
    if mounts:
        container["volumeMounts"] = mounts
    labels = {
        MANAGED_BY: MANAGED_BY_VALUE,
        OWNER: owner,
        WORKFLOW: run.name,
        RUN: run.run_id,
        STEP: container_name(name),
    }
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if profile.node_selector:
        pod_spec["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in profile.tolerations]
    metadata: Obj = {
        "name": job_name(run.run_id, name),
        "namespace": run.workspace,
        "labels": labels,
        "annotations": {STEP: name},
    }
    if run_uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "WorkflowRun",
                "name": run.run_id,
                "uid": run_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    job_spec: Obj = {
        "backoffLimit": 0,  # retries are the reconciler's, not the Job controller's
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if ttl is not None:
        job_spec["ttlSecondsAfterFinished"] = ttl  # the run keeps the outcome; logs go with it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _resources(resources: Mapping[str, Any] | None) -> Obj:
    out: Obj = {}
    for part in ("requests", "limits"):
        values = {k: str(v) for k, v in ((resources or {}).get(part) or {}).items() if v}
        if values:
            out[part] = values
    return out


@dataclass(frozen=True)
class JobOutcome:
    finished: bool
    succeeded: bool
    reason: str


def job_outcome(job: Mapping[str, Any]) -> JobOutcome:
    """Whether a Job ended and how, from its conditions (Complete / Failed)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return JobOutcome(True, True, "")
        if cond.get("type") == "Failed":
            why = cond.get("message") or cond.get("reason") or "the Job failed"
            return JobOutcome(True, False, str(why))
    return JobOutcome(False, False, "")


def pod_exit(pod: Mapping[str, Any]) -> tuple[int | None, str]:
    """The step container's exit code and why it ended, from a finished pod."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            reason = str(terminated.get("reason") or "")
            if reason == "OOMKilled":
                return code, "killed: out of memory (OOMKilled)"
            return code, "" if code == 0 else f"exited with code {code}"
    return None, str((pod.get("status") or {}).get("reason") or "")
