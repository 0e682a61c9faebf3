"""The Kubernetes backend over real HTTP, through the official client, against the test
API server (tests/kube/emulator.py): ownership, no-op syncs, errors and retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.kubernetes.backend import KubernetesBackend
from reconciler.adapters.kubernetes.client import KubeClient
from reconciler.app.syncing import SourceLoader, Syncer, SyncOptions
from reconciler.core.manifests import without_nulls
from reconciler.core.names import Revision, RunId, WorkflowKey
from reconciler.core.runs import new_run
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply
from reconciler.ports import TerminalError, TransientError
from tests.kube.emulator import KubeEmulator
from tests.kube.schemas import validate_object

REVISION = Revision("b" * 40)
SCHEDULED = """
version: v2alpha
name: nightly
type: workflow
spec:
  schedule:
    crons: ["0 2 * * *"]
    timezone: Europe/Berlin
    concurrencyPolicy: Forbid
  dag:
    - name: only
      spec:
        stack: container
        stackSpec: {image: "alpine:3.20", command: [sh, -c, "true"]}
"""
GROUP = "reconciler.dev"


class FakeClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
        self.ticks = 0.0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.ticks


def client_for(kube: KubeEmulator, sleeps: list[float] | None = None) -> KubeClient:
    waits = sleeps if sleeps is not None else []
    return KubeClient(kube.api_client(), sleep=waits.append)


def backend_for(kube: KubeEmulator, *, owner: str = "o", sleeps: list[float] | None = None):
    return KubernetesBackend(
        client_for(kube, sleeps), namespace="workflow-reconciler", owner=owner, clock=FakeClock()
    )


def desired(examples_repo: Path) -> list[DesiredWorkflow]:
    source = DirectorySource(examples_repo)
    loaded = SourceLoader(source, environ={}).load(source.latest_revision())
    return sorted(loaded.desired.values(), key=lambda d: d.key)


def request(d: DesiredWorkflow, owner: str = "o") -> WorkflowApply:
    return WorkflowApply(d, source="https://git.example/x.git", revision=REVISION, owner=owner)


@pytest.fixture
def state_namespace(kube: KubeEmulator) -> None:
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "workflow-reconciler"}})


def test_apply_creates_the_namespace_and_the_workflow_by_server_side_apply(
    kube: KubeEmulator, examples_repo: Path
) -> None:
    backend = backend_for(kube)
    first = desired(examples_repo)[0]
    applied = backend.apply_workflow(request(first))
    assert applied.key == first.key
    assert applied.state == "active"
    obj = kube.get(f"{GROUP}/v1alpha1/workflows", first.workspace, first.name)
    assert obj is not None
    assert obj["metadata"]["labels"]["reconciler.dev/owner"] == "o"
    assert obj["metadata"]["annotations"]["reconciler.dev/spec-hash"] == first.spec_hash
    assert obj["spec"]["manifest"] == without_nulls(dict(first.spec))  # nulls left out
    assert applied.spec == first.spec  # and restored on reading
    assert obj["status"]["conditions"][0]["type"] == "Ready"
    assert kube.get("v1/namespaces", None, first.workspace) is not None
    patches = [r for r in kube.requests if r.verb == "patch" and r.plural == "workflows"]
    assert patches[0].query["fieldManager"] == "workflow-reconciler"
    assert patches[0].content_type == "application/apply-patch+yaml"
    assert validate_object(obj) == []


def test_a_second_apply_of_the_same_spec_writes_nothing(
    kube: KubeEmulator, examples_repo: Path
) -> None:
    backend = backend_for(kube)
    first = desired(examples_repo)[0]
    backend.apply_workflow(request(first))
    kube.reset_counts()
    backend.apply_workflow(request(first))
    assert kube.count(write=True) == 0


def test_another_owners_workflow_is_never_taken_over_nor_deleted(
    kube: KubeEmulator, examples_repo: Path
) -> None:
    first = desired(examples_repo)[0]
    backend_for(kube, owner="a").apply_workflow(request(first, "a"))
    theirs = backend_for(kube, owner="b")
    with pytest.raises(TerminalError, match="belongs to owner 'a'"):
        theirs.apply_workflow(request(first, "b"))
    with pytest.raises(TerminalError, match="only its owner deletes it"):
        theirs.delete_workflow(first.key, owner="b")
    assert theirs.inventory(owner="b") == {}
    assert list(theirs.inventory(owner="a")) == [first.key]


def test_delete_cascades_to_runs_and_jobs(kube: KubeEmulator, examples_repo: Path) -> None:
    backend = backend_for(kube)
    first = desired(examples_repo)[0]
    backend.apply_workflow(request(first))
    run = new_run(
        workspace=first.workspace,
        run_id=RunId(f"{first.name}-m000000000001"),
        name=first.name,
        trigger="manual",
        requested_by="alice",
        revision=REVISION,
        spec=first.spec,
        spec_hash=first.spec_hash,
        now=FakeClock().now(),
    )
    assert backend.create_runs([run]) == [True]
    assert backend.create_runs([run]) == [False]  # deterministic name: a second create is a 409
    stored = kube.get(f"{GROUP}/v1alpha1/workflowruns", first.workspace, run.run_id)
    assert stored is not None
    assert stored["metadata"]["ownerReferences"][0]["kind"] == "Workflow"
    backend.delete_workflow(first.key, owner="o")
    assert backend.get_workflow(first.key) is None
    assert kube.objects("workflowruns", first.workspace) == []


def test_a_missing_crd_names_what_to_install(examples_repo: Path) -> None:
    bare = KubeEmulator()
    bare.start()
    try:
        backend = backend_for(bare)
        with pytest.raises(TerminalError, match=r"CustomResourceDefinition installed.*deploy/"):
            backend.inventory(owner="o")
    finally:
        bare.stop()


def test_a_missing_permission_names_the_verb_and_the_resource(kube: KubeEmulator) -> None:
    kube.deny("list", "workflows", group=GROUP)
    with pytest.raises(TerminalError, match=r"may not list workflows\.reconciler\.dev"):
        backend_for(kube).inventory(owner="o")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retried(
    kube: KubeEmulator, examples_repo: Path, status: int
) -> None:
    sleeps: list[float] = []
    backend = backend_for(kube, sleeps=sleeps)
    kube.inject(verb="list", plural="workflows", status=status, times=2, retry_after=1.5)
    assert backend.inventory(owner="o") == {}
    assert len(sleeps) == 2
    if status == 429:
        assert sleeps == [1.5, 1.5]  # Retry-After is honoured


def test_errors_that_persist_become_transient_errors(kube: KubeEmulator) -> None:
    sleeps: list[float] = []
    backend = backend_for(kube, sleeps=sleeps)
    kube.inject(verb="list", plural="workflows", status=500, times=100)
    with pytest.raises(TransientError, match="after 6 tries"):
        backend.inventory(owner="o")


def test_a_slow_answer_is_waited_for(kube: KubeEmulator) -> None:
    kube.inject(verb="list", plural="workflows", status=0, delay=0.5)
    assert backend_for(kube).inventory(owner="o") == {}


def test_cancel_rereads_on_a_conflict(kube: KubeEmulator, examples_repo: Path) -> None:
    backend = backend_for(kube)
    first = desired(examples_repo)[0]
    backend.apply_workflow(request(first))
    run = new_run(
        workspace=first.workspace,
        run_id=RunId(f"{first.name}-m000000000002"),
        name=first.name,
        trigger="manual",
        requested_by="alice",
        revision=REVISION,
        spec=first.spec,
        spec_hash=first.spec_hash,
        now=FakeClock().now(),
    )
    backend.create_runs([run])
    kube.inject(verb="patch", plural="workflowruns", status=409, times=1)
    assert backend.request_cancel(first.workspace, run.run_id, reason="by bob")
    again = backend.get_run(first.workspace, run.run_id)
    assert again is not None
    assert again.cancel_requested
    assert again.reason == "by bob"


def test_sync_records_and_values_live_in_one_configmap(
    kube: KubeEmulator, state_namespace: None
) -> None:
    backend = backend_for(kube)
    assert backend.get_value("status.runs_mark") is None
    backend.set_value("status.runs_mark", '["x", "y"]')
    backend.set_value("status.sync_mark", "z")
    assert backend.get_value("status.runs_mark") == '["x", "y"]'
    maps = kube.objects("configmaps", "workflow-reconciler")
    assert [m["metadata"]["name"] for m in maps] == ["workflow-reconciler-state-o"]
    assert validate_object(maps[0]) == []


def _many(examples_repo: Path, count: int) -> list[DesiredWorkflow]:
    base = desired(examples_repo)[1]
    out = []
    for index in range(count):
        name = f"wf-{index:04d}"
        spec: dict[str, Any] = {**base.spec, "name": name}
        out.append(
            DesiredWorkflow.from_spec(
                key=WorkflowKey(f"public/{name}"),
                workspace="public",
                name=name,
                path=f"workflows/{name}.yaml",
                spec=spec,
                spec_hash=f"{index:064x}",
            )
        )
    return out


def test_a_forced_no_op_pass_over_1000_workflows_reads_two_pages_and_writes_nothing(
    kube: KubeEmulator, examples_repo: Path, tmp_path: Path, state_namespace: None
) -> None:
    """The figure asked for in the issue: API requests of a no-op sync of 1,000 workflows."""
    from reconciler.adapters.kubernetes.objects import workflow_object
    from reconciler.core.planning import make_plan

    backend = backend_for(kube)
    many = _many(examples_repo, 1000)
    backend.apply_many([request(d) for d in many[:2]], read_back=False)  # the real path
    for d in many[2:]:  # the rest seeded server-side, faster
        kube.put(workflow_object(request(d)))
    kube.reset_counts()
    inventory = backend.inventory(owner="o")
    plan = make_plan({d.key: d for d in many}, inventory, complete=True)
    assert not plan.has_changes
    assert kube.count() == 2  # two pages of 500
    assert kube.count(write=True) == 0


def test_a_no_op_poll_makes_no_api_request(
    kube: KubeEmulator, examples_repo: Path, state_namespace: None
) -> None:
    backend = backend_for(kube)
    source = DirectorySource(examples_repo)
    syncer = Syncer(
        source,
        backend,
        clock=FakeClock(),
        options=SyncOptions(owner="o", environ={}),
        sleep=lambda _: None,
    )
    assert syncer.sync().result == "succeeded"
    kube.reset_counts()
    assert syncer.sync().result == "unchanged"
    assert kube.count() == 0
    outcome = syncer.sync(force=True)
    assert outcome.result == "succeeded"
    assert not outcome.plan.has_changes
    assert kube.count(write=True) == 0  # not even the sync record: nothing changed


def test_ledgers_and_next_run_are_in_the_workflow_status(
    kube: KubeEmulator, examples_repo: Path
) -> None:
    from reconciler.core.loading import load_manifest_file
    from reconciler.core.slots import Ledger

    backend = backend_for(kube)
    (loaded,) = load_manifest_file(
        "nightly.yaml", SCHEDULED.encode(), workspace="public", variables={}
    ).workflows
    scheduled = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="n.yaml")
    backend.apply_workflow(request(scheduled))
    slot = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    backend.set_ledger(scheduled.key, Ledger(slot, "h1"))
    assert backend.get_ledger(scheduled.key) == Ledger(slot, "h1")
    assert backend.get_ledgers([scheduled.key]) == {scheduled.key: Ledger(slot, "h1")}
    status = kube.get(f"{GROUP}/v1alpha1/workflows", scheduled.workspace, scheduled.name)["status"]
    assert status["lastScheduleTime"].startswith("2026-11-29T01:00:00")
    next_run = datetime.fromisoformat(status["nextRunTime"].replace("Z", "+00:00"))
    assert slot < next_run <= slot + timedelta(days=7)


def test_finished_runs_beyond_the_history_are_deleted(
    kube: KubeEmulator, examples_repo: Path
) -> None:
    from dataclasses import replace

    backend = backend_for(kube)
    backend.run_history = 2
    first = desired(examples_repo)[0]
    backend.apply_workflow(request(first))
    start = FakeClock().now()
    for index in range(4):
        run = new_run(
            workspace=first.workspace,
            run_id=RunId(f"{first.name}-m00000000000{index}"),
            name=first.name,
            trigger="manual",
            requested_by="alice",
            revision=REVISION,
            spec=first.spec,
            spec_hash=first.spec_hash,
            now=start + timedelta(minutes=index),
        )
        backend.create_runs([run])
        ended = replace(
            run, state="succeeded", started_at=run.created_at, finished_at=run.created_at
        )
        backend.save_run(ended)
    kept = sorted(o["metadata"]["name"] for o in kube.objects("workflowruns", first.workspace))
    assert kept == [f"{first.name}-m000000000002", f"{first.name}-m000000000003"]


def test_a_manifest_that_breaks_stalls_its_workflow_until_fixed(
    kube: KubeEmulator, examples_repo: Path, tmp_path: Path, state_namespace: None
) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(examples_repo, repo)
    syncer = Syncer(
        DirectorySource(repo),
        backend_for(kube),
        clock=FakeClock(),
        options=SyncOptions(owner="o", environ={}),
        sleep=lambda _: None,
    )
    assert syncer.sync().result == "succeeded"
    path = repo / "workflows" / "daily-report.yaml"
    good = path.read_text()
    path.write_text(good.replace("name: generate-report", "name: Generate Report!"))

    def conditions() -> dict[str, dict[str, Any]]:
        obj = kube.get(f"{GROUP}/v1alpha1/workflows", "public", "daily-report")
        assert obj is not None
        return {c["type"]: c for c in obj["status"]["conditions"]}

    assert syncer.sync(force=True).result == "failed"
    stalled = conditions()["Stalled"]
    assert stalled["status"] == "True"
    assert "workflows/daily-report.yaml:" in stalled["message"]
    assert conditions()["Ready"]["status"] == "False"
    assert kube.get(f"{GROUP}/v1alpha1/workflows", "public", "daily-report") is not None  # kept
    path.write_text(good)
    assert syncer.sync(force=True).result == "succeeded"
    assert conditions()["Stalled"]["status"] == "False"
    assert conditions()["Ready"]["status"] == "True"
    reasons = [e["reason"] for e in kube.objects("events", "public")]
    assert reasons.count("Stalled") == 1
    assert reasons.count("Recovered") == 1


def test_in_a_pod_the_service_account_is_used(tmp_path: Path) -> None:
    from reconciler.adapters.kubernetes.client import load_api_client

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    api = load_api_client(service_account=account, environ=environ)
    configuration = api.configuration
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.ssl_ca_cert == str(account / "ca.crt")
    assert configuration.auth_settings()["BearerToken"]["value"] == "bearer pod-token"
    # outside a pod (no service host), a kubeconfig is needed and its absence is explained
    with pytest.raises(TerminalError, match="no usable Kubernetes configuration"):
        load_api_client(kubeconfig=tmp_path / "missing", service_account=account, environ=environ)


@pytest.mark.parametrize("workspace", ["kube-system", "workflow-reconciler", "elsewhere"])
def test_workflows_never_reach_reserved_or_unlisted_namespaces(
    kube: KubeEmulator, examples_repo: Path, workspace: str
) -> None:
    from dataclasses import replace

    backend = backend_for(kube)
    backend.workspaces = (
        frozenset({"public", "finance"}) if workspace == "elsewhere" else frozenset()
    )
    first = desired(examples_repo)[0]
    moved = replace(first, workspace=workspace, key=WorkflowKey(f"{workspace}/{first.name}"))
    with pytest.raises(TerminalError, match=f"workspace '{workspace}' may not hold workflows"):
        backend.apply_workflow(request(moved))
    assert kube.objects("workflows") == []
    backend.apply_workflow(request(first))  # public is fine
