"""The kustomize installation in deploy/: it renders, validates, and grants no more than needed.

Both the base (``deploy/``) and the example overlay are rendered with
``kubectl kustomize`` and every object is validated offline (tests/kube/schemas.py)
for Kubernetes ``KUBE_VERSION`` and for the newest API schemas bundled.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.app.settings import load_settings
from reconciler.core.manifests import Workflow, normalized_spec
from tests.kube.schemas import (
    DEPLOY,
    KUBE_VERSION,
    LATEST_KUBE_VERSION,
    PROJECT,
    assert_valid,
    crd_documents,
    crd_schema,
    describe,
    kustomize_build,
    rbac_grants,
    structural_problems,
    validate_object,
)

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) is not on PATH"
)

BASE = DEPLOY
OVERLAY = DEPLOY / "overlays" / "example"
NAMESPACE = "workflow-reconciler"
NAME = "workflow-reconciler"
REVISION = "3f786850e387550fdab836ed7e6dc881de23001b"
SPEC_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

CLUSTER_GRANTS = {
    ("reconciler.dev", "workflows"): {"get", "list", "watch", "create", "patch", "delete"},
    ("reconciler.dev", "workflows/status"): {"patch"},
    ("reconciler.dev", "workflowruns"): {"get", "list", "create", "patch", "delete"},
    ("reconciler.dev", "workflowruns/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
    ("", "namespaces"): {"get", "create"},
    ("", "persistentvolumeclaims"): {"get"},
}
NAMESPACE_GRANTS = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("", "configmaps"): {"get", "create", "patch"},
}


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize_build(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize_build(OVERLAY)


def one(objects: list[dict[str, Any]], kind: str, name: str = NAME) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = one(objects, "ConfigMap", "workflow-reconciler-config")["data"]
    assert set(data) == {"config.yaml"}
    loaded: dict[str, Any] = yaml.safe_load(data["config.yaml"])
    return loaded


# ---------------------------------------------------------------------------
# rendering and validation
# ---------------------------------------------------------------------------


def test_base_renders_the_installation(base: list[dict[str, Any]]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in base) == sorted(
        [
            ("Namespace", NAMESPACE),
            ("CustomResourceDefinition", "workflows.reconciler.dev"),
            ("CustomResourceDefinition", "workflowruns.reconciler.dev"),
            ("ServiceAccount", NAME),
            ("ClusterRole", NAME),
            ("ClusterRoleBinding", NAME),
            ("Role", NAME),
            ("RoleBinding", NAME),
            ("ConfigMap", "workflow-reconciler-config"),
            ("Deployment", NAME),
            ("PodDisruptionBudget", NAME),
            ("Service", NAME),
        ]
    )
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in base:
        namespace = obj["metadata"].get("namespace")
        assert namespace == (None if obj["kind"] in cluster_scoped else NAMESPACE), describe(obj)


@pytest.mark.parametrize("version", [KUBE_VERSION, LATEST_KUBE_VERSION])
@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_rendered_object_validates(directory: Path, version: str) -> None:
    objects = kustomize_build(directory)
    assert objects
    problems = [f"{describe(o)}: {p}" for o in objects for p in validate_object(o, version=version)]
    assert problems == []


def test_no_secret_is_shipped(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    assert [o for o in base + overlay if o["kind"] == "Secret"] == []


def test_the_validator_rejects_a_broken_object(base: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(one(base, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    deployment["spec"]["replicas"] = "2"
    problems = validate_object(deployment)
    assert any("imagePulPolicy" in p for p in problems)
    assert any(p.startswith("spec.replicas:") for p in problems)
    with pytest.raises(AssertionError, match="Deployment workflow-reconciler/workflow-reconciler"):
        assert_valid(deployment)


# ---------------------------------------------------------------------------
# CRDs
# ---------------------------------------------------------------------------


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``node`` with its path (properties, items, additionalProperties)."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", ["Workflow", "WorkflowRun"])
def test_crd_schemas_are_structural(kind: str) -> None:
    schema = crd_schema(kind)
    assert structural_problems(schema) == []
    forbidden = {"$ref", "definitions", "dependencies", "patternProperties", "additionalItems"}
    forbidden |= {"allOf", "anyOf", "oneOf", "not", "uniqueItems"}
    for path, node in schema_nodes(schema, kind):
        assert not forbidden & set(node), f"{path} uses {forbidden & set(node)}"
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert node.get("type") or untyped_ok, f"{path} has no type"
        assert not (node.get("nullable") and "enum" in node), f"{path}: null fails an enum"


def test_crds_are_namespaced_v1alpha1_with_status_subresources() -> None:
    crds = {crd["spec"]["names"]["kind"]: crd for crd in crd_documents()}
    assert set(crds) == {"Workflow", "WorkflowRun"}
    expected_names = {
        "Workflow": ("workflows", "workflow", ["rwf"]),
        "WorkflowRun": ("workflowruns", "workflowrun", ["rwfr"]),
    }
    for kind, crd in crds.items():
        assert_valid(crd)
        spec = crd["spec"]
        plural, singular, short = expected_names[kind]
        assert crd["metadata"]["name"] == f"{plural}.reconciler.dev"
        assert spec["group"] == "reconciler.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["singular"] == singular
        assert spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["reconciler"]
        [version] = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert "spec" in version["schema"]["openAPIV3Schema"]["properties"]
        assert "status" in version["schema"]["openAPIV3Schema"]["properties"]


def printer_columns(kind: str) -> list[tuple[str, str, str, int]]:
    crd = next(c for c in crd_documents() if c["spec"]["names"]["kind"] == kind)
    return [
        (c["name"].upper(), c["jsonPath"], c["type"], c.get("priority", 0))
        for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    ]


def test_workflow_printer_columns() -> None:
    assert printer_columns("Workflow") == [
        ("STATE", ".status.state", "string", 0),
        ("LAST RUN", ".status.lastRun.startTime", "date", 0),
        ("RESULT", ".status.lastRun.result", "string", 0),
        ("NEXT RUN", ".status.nextRunTime", "date", 0),
        ("SUSPENDED", ".spec.suspend", "boolean", 1),
        ("AGE", ".metadata.creationTimestamp", "date", 0),
    ]


def test_workflowrun_printer_columns() -> None:
    assert printer_columns("WorkflowRun") == [
        ("WORKFLOW", ".spec.workflow", "string", 0),
        ("STATE", ".status.state", "string", 0),
        ("TRIGGER", ".spec.trigger", "string", 0),
        ("STARTED", ".status.startTime", "date", 0),
        ("FINISHED", ".status.completionTime", "date", 0),
        ("AGE", ".metadata.creationTimestamp", "date", 0),
    ]


# ---------------------------------------------------------------------------
# custom objects as the daemon sends them
# ---------------------------------------------------------------------------

DAILY_REPORT = {
    "version": "v2alpha",
    "name": "daily-report",
    "type": "workflow",
    "tags": ["batch"],
    "description": None,
    "spec": {
        "type": "instance",
        "use": None,
        "dependencies": [
            {
                "workflow": "ingest-orders",
                "volume": None,
                "workspace": None,
                "condition": "succeeded",
                "within": "24h",
                "timeout": "1h",
            }
        ],
        "schedule": {
            "crons": ["0 * * * *"],
            "timezone": "UTC",
            "concurrencyPolicy": "Forbid",
        },
        "dag": [
            {
                "name": "generate-report",
                "title": "Generate report",
                "depends": [],
                "spec": {
                    "compute": "runnable-default",
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"cpu": "500m", "memory": None},
                    },
                    "runAsUser": None,
                    "use": {
                        "volumes": [{"id": "shared", "directory": "/workspace", "readOnly": False}],
                        "projection": None,
                    },
                    "stack": "container",
                    "stackSpec": {
                        "image": "docker.io/library/alpine:3.20",
                        "command": ["sh", "-c"],
                        "arguments": ["date -u"],
                        "env": {"LOG_LEVEL": "info"},
                    },
                },
            },
            {
                "name": "gate",
                "title": None,
                "depends": ["generate-report"],
                "spec": {
                    "compute": None,
                    "resources": None,
                    "runAsUser": None,
                    "use": None,
                    "stack": None,
                    "stackSpec": None,
                },
            },
        ],
    },
}


def workflow_object(manifest: dict[str, Any], *, status: bool = True) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": manifest["name"],
            "namespace": "public",
            "labels": {
                "app.kubernetes.io/managed-by": "workflow-reconciler",
                "reconciler.dev/owner": "default",
            },
            "annotations": {
                "reconciler.dev/source": "https://git.example/repo.git",
                "reconciler.dev/path": f"workflows/{manifest['name']}.yaml",
                "reconciler.dev/revision": REVISION,
                "reconciler.dev/spec-hash": SPEC_HASH,
            },
        },
        "spec": {"suspend": False, "manifest": copy.deepcopy(manifest)},
    }
    if status:
        obj["status"] = {
            "observedGeneration": 3,
            "state": "active",
            "lastAppliedRevision": REVISION,
            "lastScheduleTime": "2026-11-29T01:00:00Z",
            "scheduleHash": "5d41402abc4b2a76",
            "nextRunTime": "2026-11-29T02:00:00+00:00",
            "activeRuns": [{"name": "daily-report-20261129010000"}],
            "lastRun": {
                "name": "daily-report-20261129000000",
                "result": "succeeded",
                "startTime": "2026-11-29T00:00:01Z",
                "completionTime": "2026-11-29T00:00:09.512Z",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Applied",
                    "message": f"revision {REVISION[:12]} applied",
                    "lastTransitionTime": "2026-11-28T23:00:00Z",
                    "observedGeneration": 3,
                },
                {
                    "type": "Reconciling",
                    "status": "False",
                    "reason": "Idle",
                    "message": "",
                    "lastTransitionTime": "2026-11-28T23:00:00Z",
                    "observedGeneration": 3,
                },
            ],
        }
    return obj


def workflow_run_object(*, manual: bool = False) -> dict[str, Any]:
    name = "daily-report-manual-7fk2p" if manual else "daily-report-20261129010000"
    return {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "WorkflowRun",
        "metadata": {
            "name": name,
            "namespace": "public",
            "labels": {
                "app.kubernetes.io/managed-by": "workflow-reconciler",
                "reconciler.dev/owner": "default",
                "reconciler.dev/workflow": "daily-report",
                "reconciler.dev/state": "running",
            },
            "ownerReferences": [
                {
                    "apiVersion": "reconciler.dev/v1alpha1",
                    "kind": "Workflow",
                    "name": "daily-report",
                    "uid": "0b5f6b5e-3c1a-4f55-9a43-6f1d3c7a2b10",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "workflow": "daily-report",
            "trigger": "manual" if manual else "schedule",
            "requestedBy": "alice" if manual else "scheduler",
            "revision": REVISION,
            "specHash": SPEC_HASH,
            "slot": None if manual else "2026-11-29T01:00:00Z",
            "createdAt": "2026-11-29T01:00:00.123456Z",
            "cancel": manual,
            "cancelReason": "requested by alice" if manual else "",
            "manifest": copy.deepcopy(DAILY_REPORT),
        },
        "status": {
            "state": "running",
            "reason": "",
            "startTime": "2026-11-29T01:00:02Z",
            "completionTime": None,
            "steps": [
                {
                    "name": "generate-report",
                    "depends": [],
                    "state": "succeeded",
                    "startTime": "2026-11-29T01:00:02Z",
                    "completionTime": "2026-11-29T01:00:07Z",
                    "exitCode": 0,
                    "reason": "",
                    "job": f"{name}-generate-report",
                },
                {
                    "name": "gate",
                    "depends": ["generate-report"],
                    "state": "pending",
                    "startTime": None,
                    "completionTime": None,
                    "exitCode": None,
                    "reason": "waiting for generate-report",
                    "job": None,
                },
            ],
        },
    }


def example_manifests() -> list[dict[str, Any]]:
    """The normalized manifests of examples-repo/ and the golden kitchen sink."""
    files = sorted((PROJECT / "examples-repo" / "workflows").glob("*.yaml"))
    files.append(PROJECT / "tests" / "core" / "golden" / "valid" / "kitchen-sink.yaml")
    manifests = []
    for file in files:
        text = file.read_text().replace("${SHARED_VOLUME_ID}", "shared-vol")
        for document in yaml.safe_load_all(text):
            manifests.append(normalized_spec(Workflow.model_validate(document)))
    return manifests


@pytest.mark.parametrize(
    "obj",
    [
        workflow_object(DAILY_REPORT),
        workflow_object(DAILY_REPORT, status=False),
        workflow_run_object(),
        workflow_run_object(manual=True),
    ],
    ids=["workflow", "workflow-without-status", "scheduled-run", "manual-run-cancelled"],
)
def test_example_custom_objects_validate(obj: dict[str, Any]) -> None:
    assert_valid(obj)


def test_every_example_manifest_fits_the_workflow_crd() -> None:
    manifests = example_manifests()
    assert len(manifests) >= 5
    for manifest in manifests:
        assert_valid(workflow_object(manifest))
        run = workflow_run_object()
        run["spec"]["manifest"] = manifest
        assert_valid(run)


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

INVALID_WORKFLOWS = [
    ("spec.suspend", None, "spec.suspend"),
    ("spec.suspend", "yes", "spec.suspend"),
    ("spec.manifest", _DELETE, "manifest"),
    ("spec.replicas", 2, "replicas"),
    ("spec.manifest.type", "service", "spec.manifest.type"),
    ("spec.manifest.tags", "batch", "spec.manifest.tags"),
    ("spec.manifest.spec.dag", [], "spec.manifest.spec.dag"),
    ("spec.manifest.spec.dag.0.spec.runAsUser", "root", "runAsUser"),
    ("spec.manifest.spec.dag.0.colour", "blue", "colour"),
    ("spec.manifest.spec.schedule.concurrencyPolicy", "Sometimes", "concurrencyPolicy"),
    ("status.state", "paused", "status.state"),
    ("status.lastScheduleTime", "2026-11-29 01:00", "status.lastScheduleTime"),
    ("status.nextRunTime", "2026-11-29T02:00:00", "status.nextRunTime"),
    ("status.lastRun.result", None, "status.lastRun.result"),
    ("status.lastRun.exitCode", 1, "exitCode"),
    ("status.observedGeneration", -1, "status.observedGeneration"),
    ("status.conditions.1.type", "Ready", "status.conditions"),
    ("status.conditions.0.status", "true", "status.conditions[0].status"),
    ("status.activeRuns.0", {}, "name"),
    ("metadata.name", "Daily_Report", "metadata.name"),
    ("metadata.labels.reconciler.dev/owner", "not valid!", "metadata.labels"),
    ("apiVersion", "reconciler.dev/v1beta1", "apiVersion"),
]


@pytest.mark.parametrize(("path", "value", "reported"), INVALID_WORKFLOWS)
def test_invalid_workflows_are_rejected(path: str, value: Any, reported: str) -> None:
    obj = workflow_object(DAILY_REPORT)
    if path.startswith("metadata.labels."):
        obj["metadata"]["labels"][path.removeprefix("metadata.labels.")] = value
    else:
        _set(obj, path, value)
    problems = validate_object(obj)
    assert problems, f"{path}={value!r} was accepted"
    assert any(reported in p for p in problems), problems


INVALID_RUNS = [
    ("spec.trigger", "cron", "spec.trigger"),
    ("spec.workflow", _DELETE, "workflow"),
    ("spec.createdAt", "yesterday", "spec.createdAt"),
    ("spec.slot", "2026-13-29T01:00:00Z", "spec.slot"),
    ("spec.cancel", "true", "spec.cancel"),
    ("status.state", "aborted", "status.state"),
    ("status.steps.0.state", "done", "status.steps[0].state"),
    ("status.steps.0.exitCode", "1", "status.steps[0].exitCode"),
    ("status.steps.0.exitCode", 2**40, "status.steps[0].exitCode"),
    ("status.steps.1.name", "generate-report", "status.steps"),
    ("status.steps.0.depends", "extract", "status.steps[0].depends"),
    ("status.steps.0.logs", "...", "logs"),
]


@pytest.mark.parametrize(("path", "value", "reported"), INVALID_RUNS)
def test_invalid_workflow_runs_are_rejected(path: str, value: Any, reported: str) -> None:
    obj = workflow_run_object()
    _set(obj, path, value)
    problems = validate_object(obj)
    assert problems, f"{path}={value!r} was accepted"
    assert any(reported in p for p in problems), problems


def test_free_form_parts_of_the_manifest_keep_unknown_fields() -> None:
    obj = workflow_object(DAILY_REPORT)
    manifest = obj["spec"]["manifest"]
    manifest["spec"]["dag"][0]["spec"]["stackSpec"]["anything"] = {"nested": [1, None]}
    manifest["spec"]["dag"][0]["spec"]["futureField"] = True
    manifest["spec"]["schedule"]["endOn"] = "2027-01-01T00:00:00Z"
    manifest["spec"]["dependencies"][0]["extra"] = "kept"
    assert_valid(obj)


# ---------------------------------------------------------------------------
# RBAC
# ---------------------------------------------------------------------------


def rbac_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_rbac_grants_exactly_the_verbs_the_daemon_uses(base: list[dict[str, Any]]) -> None:
    grants = rbac_grants(base)
    assert {k: set(v) for k, v in grants["ClusterRole"].items()} == CLUSTER_GRANTS
    assert {k: set(v) for k, v in grants["Role"].items()} == NAMESPACE_GRANTS
    assert [o["metadata"]["name"] for o in base if o["kind"] == "ClusterRole"] == [NAME]
    role = one(base, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    for obj in rbac_objects(base):
        assert "aggregationRule" not in obj
        for rule in obj.get("rules", ()):
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
            assert len(rule["verbs"]) == len(set(rule["verbs"])), rule


def test_rbac_has_no_secrets_and_no_wildcards(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    for obj in rbac_objects(base) + rbac_objects(overlay):
        for rule in obj.get("rules", ()):
            assert not any("secret" in r for r in rule["resources"]), rule
        assert not any("*" in s for s in strings(obj)), describe(obj)
    assert rbac_grants(base) == rbac_grants(overlay)


def test_bindings_bind_the_service_account(base: list[dict[str, Any]]) -> None:
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(base, kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": NAME,
        }
        assert binding["subjects"] == [subject]
    assert one(base, "ServiceAccount")["automountServiceAccountToken"] is False


# ---------------------------------------------------------------------------
# Deployment, PDB, Service, ConfigMap
# ---------------------------------------------------------------------------


def test_deployment_runs_two_leader_elected_replicas(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = pod_spec(base)
    assert pod["serviceAccountName"] == NAME
    assert pod["automountServiceAccountToken"] is True
    assert pod["terminationGracePeriodSeconds"] == 60
    main = container(base)
    assert main["image"] == "ghcr.io/example/workflow-reconciler:0.1.0"
    assert main["args"] == ["daemon"]
    assert "command" not in main  # the image's ENTRYPOINT is `reconciler`
    env = {e["name"]: e for e in main["env"]}
    assert env["RECONCILER_CONFIG"]["value"] == "/etc/reconciler/config.yaml"
    assert env["RECONCILER_STATE_DIR"]["value"] == "/var/lib/reconciler"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in main["env"])
    assert "envFrom" not in main


def test_deployment_probes_and_resources(base: list[dict[str, Any]]) -> None:
    main = container(base)
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    resources = main["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section
    assert resources["requests"]["cpu"] == "100m"
    assert resources["requests"]["memory"] == "256Mi"
    assert resources["limits"]["cpu"] == "1"
    assert resources["limits"]["memory"] == "512Mi"


def test_deployment_is_locked_down(base: list[dict[str, Any]]) -> None:
    pod = pod_spec(base)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container(base)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert not any("hostPath" in v for v in pod["volumes"])
    namespace = one(base, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_volumes(base: list[dict[str, Any]]) -> None:
    volumes = {v["name"]: v for v in pod_spec(base)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(base)["volumeMounts"]}
    git = mounts["/etc/reconciler/git"]
    assert git["readOnly"] is True
    assert "subPath" not in git  # a whole-directory mount follows Secret updates
    secret = volumes[git["name"]]["secret"]
    assert secret["secretName"] == "workflow-reconciler-git"
    assert secret["optional"] is True
    assert secret["defaultMode"] & 0o007 == 0  # not world-readable
    cfg = mounts["/etc/reconciler/config.yaml"]
    assert cfg["readOnly"] is True
    assert cfg["subPath"] == "config.yaml"
    assert volumes[cfg["name"]]["configMap"]["name"] == "workflow-reconciler-config"
    for path in ("/var/lib/reconciler", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    for path, secret in (
        ("/etc/reconciler/webhooks", "workflow-reconciler-webhooks"),
        ("/etc/reconciler/notify", "workflow-reconciler-notify"),
    ):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["secret"] == {
            "secretName": secret,
            "optional": True,
            "defaultMode": 288,
        }
    assert set(mounts) == {
        "/etc/reconciler/git",
        "/etc/reconciler/webhooks",
        "/etc/reconciler/notify",
        "/etc/reconciler/config.yaml",
        "/var/lib/reconciler",
        "/tmp",
    }


def test_pdb_and_service_select_the_pods(base: list[dict[str, Any]]) -> None:
    deployment = one(base, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    service = one(base, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    spread = pod_spec(base)["topologySpreadConstraints"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)


def test_base_config(base: list[dict[str, Any]]) -> None:
    settings = config(base)
    assert settings["backend"] == "kubernetes"
    assert settings["kube_namespace"] == NAMESPACE
    assert settings["leader_election"] is True
    assert settings["http_address"].endswith(":8080")
    assert settings["git_token_file"].startswith("/etc/reconciler/git/")
    assert settings["compute"] == {"runnable-default": {}}
    assert not {"git_token", "token", "password"} & set(settings)  # credentials are files


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_daemon_accepts_the_config(directory: Path, tmp_path: Path) -> None:
    objects = kustomize_build(directory)
    file = tmp_path / "config.yaml"
    file.write_text(one(objects, "ConfigMap", "workflow-reconciler-config")["data"]["config.yaml"])
    environ = {
        e["name"]: e["value"]
        for e in container(objects)["env"]
        if e["name"].startswith("RECONCILER_") and "value" in e
    }
    environ["RECONCILER_CONFIG"] = str(file)
    settings = load_settings({}, environ=environ, config_file=file)
    assert settings.backend == "kubernetes"
    assert str(settings.state_dir) == "/var/lib/reconciler"
    # The names deploy/ and its README rely on are the daemon's defaults.
    assert settings.kube_namespace == NAMESPACE
    assert settings.lease_name == "workflow-reconciler-leader"


# ---------------------------------------------------------------------------
# the example overlay
# ---------------------------------------------------------------------------


def test_overlay_changes_the_image_and_the_config(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    assert container(overlay)["image"] == "registry.example.com/platform/workflow-reconciler:0.1.0"
    settings = config(overlay)
    assert settings["repo"] != config(base)["repo"]
    assert settings["repo"].startswith("https://")
    assert settings["compute"] == {
        "runnable-default": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        }
    }
    assert {k: v for k, v in settings.items() if k not in ("repo", "path", "compute")} == {
        k: v for k, v in config(base).items() if k not in ("repo", "path", "compute")
    }


def test_overlay_labels_everything_but_keeps_selectors(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    for obj in overlay:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "example", describe(obj)
    assert (
        one(overlay, "Deployment")["spec"]["selector"]
        == one(base, "Deployment")["spec"]["selector"]
    )
    assert sorted((o["kind"], o["metadata"]["name"]) for o in overlay) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in base
    )


def test_readme_documents_install_secret_and_leader_election() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needle in (
        "kubectl apply -k deploy/",
        "kubectl apply -k deploy/overlays/example",
        "create secret generic workflow-reconciler-git",
        "workflow-reconciler-leader",
        "/var/lib/reconciler",
    ):
        assert needle in readme, needle
