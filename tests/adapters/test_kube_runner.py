"""Steps as Jobs: the executor over the Kubernetes backend and runner, against the test API
server, whose simulated kubelet runs each pod's command as a real local process."""

from __future__ import annotations

import base64
import time

import pytest

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.kubernetes.backend import KubernetesBackend
from reconciler.adapters.kubernetes.client import KubeClient
from reconciler.adapters.kubernetes.jobs import job_name
from reconciler.adapters.kubernetes.runner import KubernetesStepRunner
from reconciler.app.running import Executor
from reconciler.core.loading import load_manifest_file
from reconciler.core.names import Revision, RunId
from reconciler.core.runs import Run, new_run
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply
from tests.kube.emulator import KubeEmulator
from tests.kube.schemas import validate_object

DIAMOND = """
version: v2alpha
name: diamond
type: workflow
spec:
  use:
    projection:
      secrets:
        - id: db-credentials
          contextAlias: db
      projections:
        envVars:
          - key: RUN
            value: "{{.defaultProjections.runId}}"
          - key: DSN
            value: "postgres://app:{{.secrets.db.PASSWORD}}@db/x"
  dag:
    - name: a
      spec:
        stack: container
        stackSpec: {image: "alpine:3.20", command: [sh, -c, 'echo "a $RUN"']}
    - name: b
      depends: [a]
      spec:
        stack: container
        stackSpec: {image: "alpine:3.20", command: [sh, -c, 'test "$DSN" = "postgres://app:s3cret@db/x"']}
    - name: c
      depends: [a]
      spec:
        stack: container
        stackSpec: {image: "alpine:3.20", command: [sh, -c, "echo c; exit 0"]}
    - name: d
      depends: [b, c]
      spec:
        stack: container
        stackSpec: {image: "alpine:3.20", command: [sh, -c, "echo done"]}
"""


def wire(kube: KubeEmulator) -> tuple[KubernetesBackend, KubernetesStepRunner]:
    client = KubeClient(kube.api_client())
    clock = SystemClock()
    backend = KubernetesBackend(client, namespace="workflow-reconciler", owner="o", clock=clock)
    runner = KubernetesStepRunner(client, owner="o", clock=clock)
    return backend, runner


def create_run(backend: KubernetesBackend, text: str, run_id: str) -> Run:
    (loaded,) = load_manifest_file(
        "w.yaml", text.encode(), workspace="public", variables={}
    ).workflows
    desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="w.yaml")
    backend.apply_workflow(
        WorkflowApply(desired, source="t", revision=Revision("r" * 40), owner="o")
    )
    run = new_run(
        workspace="public",
        run_id=RunId(run_id),
        name=desired.name,
        trigger="manual",
        requested_by="test",
        revision=Revision("r" * 40),
        spec=desired.spec,
        spec_hash=desired.spec_hash,
        now=SystemClock().now(),
    )
    assert backend.create_runs([run]) == [True]
    return run


def run_all(executor: Executor, limit: float = 30.0) -> None:
    executor.notify()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        executor.step(wait=0.2)
        if not executor.runs:
            return
    raise AssertionError("the run did not end")


def secret(kube: KubeEmulator, name: str, **data: str) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "public"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


@pytest.fixture
def running(kube: KubeEmulator) -> KubeEmulator:
    kube.job_outcome = kube.local_outcome()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "public"}})
    return kube


def test_jobs_run_in_dag_order_and_the_run_succeeds(running: KubeEmulator) -> None:
    backend, runner = wire(running)
    secret(running, "db-credentials", PASSWORD="s3cret")
    run = create_run(backend, DIAMOND, "diamond-m1")
    try:
        run_all(Executor(backend, runner, clock=SystemClock()))
    finally:
        runner.close()
    done = backend.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "succeeded", [(s.name, s.state, s.reason) for s in done.steps]
    created = [r.name or "" for r in running.requests if r.verb == "create" and r.plural == "jobs"]
    order = [next(s for s in "abcd" if job_name(run.run_id, s) == n) for n in created]
    assert order[0] == "a"
    assert order[-1] == "d"
    assert sorted(order[1:3]) == ["b", "c"]
    for job in running.objects("jobs", "public"):
        assert validate_object(job) == []
        assert job["metadata"]["ownerReferences"][0]["kind"] == "WorkflowRun"
    assert runner.read_log("public", run.run_id, "a") == f"a {run.run_id}\n".encode()
    stored = running.get("reconciler.dev/v1alpha1/workflowruns", "public", run.run_id)
    assert stored is not None
    assert validate_object(stored) == []
    assert stored["metadata"]["labels"]["reconciler.dev/state"] == "succeeded"
    assert [s["state"] for s in stored["status"]["steps"]] == ["succeeded"] * 4
    workflow = running.get("reconciler.dev/v1alpha1/workflows", "public", "diamond")
    assert workflow is not None
    assert workflow["status"]["lastRun"]["result"] == "succeeded"


def test_a_pod_stuck_on_a_missing_secret_fails_its_step_after_the_grace(
    running: KubeEmulator,
) -> None:
    """As on a real cluster the pod waits (CreateContainerConfigError) instead of failing: the
    runner notices from the pod watch and fails the step with the kubelet's message."""
    backend, runner = wire(running)
    runner.stuck_grace = 0.2
    run = create_run(backend, DIAMOND, "diamond-m2")
    try:
        run_all(Executor(backend, runner, clock=SystemClock()))
    finally:
        runner.close()
    done = backend.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "failed"
    states = {s.name: s.state for s in done.steps}
    assert states == {"a": "failed", "b": "skipped", "c": "skipped", "d": "skipped"}
    assert "CreateContainerConfigError" in done.step("a").reason
    assert "db-credentials" in done.step("a").reason
    assert running.objects("jobs", "public") == []  # the stuck Job was deleted


def test_a_failing_command_fails_the_step_with_its_exit_code(running: KubeEmulator) -> None:
    backend, runner = wire(running)
    secret(running, "db-credentials", PASSWORD="wrong")  # b's test fails: exit 1
    run = create_run(backend, DIAMOND, "diamond-m6")
    try:
        run_all(Executor(backend, runner, clock=SystemClock()))
    finally:
        runner.close()
    done = backend.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "failed"
    states = {s.name: s.state for s in done.steps}
    assert states == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "skipped"}
    assert (done.step("b").exit_code, done.step("b").reason) == (1, "exited with code 1")


def test_cancel_deletes_the_running_job(kube: KubeEmulator) -> None:
    kube.job_outcome = None  # pods never end on their own
    backend, runner = wire(kube)
    run = create_run(backend, DIAMOND, "diamond-m3")
    executor = Executor(backend, runner, clock=SystemClock())
    try:
        executor.notify()
        for _ in range(50):
            executor.step(wait=0.1)
            if kube.objects("jobs", "public"):
                break
        workflow = kube.get("reconciler.dev/v1alpha1/workflows", "public", "diamond")
        assert workflow is not None
        assert workflow["status"]["activeRuns"] == [{"name": run.run_id}]
        assert workflow["status"]["state"] == "running"
        assert backend.request_cancel("public", run.run_id, reason="stop it")
        deadline = time.monotonic() + 20
        while executor.runs and time.monotonic() < deadline:
            executor.step(wait=0.2)
    finally:
        runner.close()
    done = backend.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "cancelled"
    assert kube.objects("jobs", "public") == []
    workflow = kube.get("reconciler.dev/v1alpha1/workflows", "public", "diamond")
    assert workflow is not None
    assert workflow["status"]["activeRuns"] == []
    assert workflow["status"]["lastRun"]["result"] == "cancelled"


def test_a_new_daemon_follows_jobs_a_previous_one_started(kube: KubeEmulator) -> None:
    kube.job_outcome = None
    backend, runner = wire(kube)
    run = create_run(backend, DIAMOND, "diamond-m4")
    first = Executor(backend, runner, clock=SystemClock())
    first.notify()
    for _ in range(50):
        first.step(wait=0.1)
        if kube.objects("jobs", "public"):
            break
    first.shut_down(grace=0)  # a rolling update: the Job keeps running
    runner.close()
    assert len(kube.objects("jobs", "public")) == 1

    backend2, runner2 = wire(kube)
    second = Executor(backend2, runner2, clock=SystemClock())
    try:
        assert second.recover() == []  # nothing failed: the run is followed again
        kube.job_outcome = kube.local_outcome()
        kube.finish_job("public", job_name(run.run_id, "a"), 0, "a\n")
        secret(kube, "db-credentials", PASSWORD="s3cret")
        run_all(second)
    finally:
        runner2.close()
    done = backend2.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "succeeded"
    created = [r for r in kube.requests if r.verb == "create" and r.plural == "jobs"]
    assert len(created) == 4  # step a was not started twice


def test_the_job_watch_resumes_and_relists_after_410(running: KubeEmulator) -> None:
    backend, runner = wire(running)
    secret(running, "db-credentials", PASSWORD="s3cret")
    runner.start_watching()
    secret(running, "unrelated", X="1")  # the server moves past the watch's version...
    running.compact()  # ...and forgets its history: resuming from there is a 410
    running.close_watches()
    run = create_run(backend, DIAMOND, "diamond-m5")
    try:
        run_all(Executor(backend, runner, clock=SystemClock()))
    finally:
        runner.close()
    done = backend.get_run("public", run.run_id)
    assert done is not None
    assert done.state == "succeeded"
    assert runner.jobs.lists >= 2  # listed again after the 410
    watches = [r for r in running.requests if r.verb == "watch" and r.plural == "jobs"]
    assert len(watches) >= 2


def test_a_volume_is_a_claim_in_the_workspace(kube: KubeEmulator) -> None:
    _, runner = wire(kube)
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "public"}})
    assert not runner.volume_exists("public", "shared")
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared", "namespace": "public"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    )
    assert runner.volume_exists("public", "shared")
    assert not runner.volume_exists("elsewhere", "shared")


def test_a_workflowrun_created_by_a_person_is_filled_in_and_run(running: KubeEmulator) -> None:
    """Triggering through Kubernetes RBAC: a WorkflowRun with only spec.workflow."""
    backend, runner = wire(running)
    secret(running, "db-credentials", PASSWORD="s3cret")
    create_run(backend, DIAMOND, "diamond-m7")  # applies the workflow (and one run)
    backend.start_watching()
    running.put(
        {
            "apiVersion": "reconciler.dev/v1alpha1",
            "kind": "WorkflowRun",
            "metadata": {"name": "diamond-by-hand", "namespace": "public"},
            "spec": {"workflow": "diamond"},
        }
    )
    running.put(
        {
            "apiVersion": "reconciler.dev/v1alpha1",
            "kind": "WorkflowRun",
            "metadata": {"name": "nothing-by-hand", "namespace": "public"},
            "spec": {"workflow": "no-such-workflow"},
        }
    )
    try:
        run_all(Executor(backend, runner, clock=SystemClock()))
    finally:
        runner.close()
        backend.close()
    done = backend.get_run("public", "diamond-by-hand")
    assert done is not None
    assert done.state == "succeeded"
    assert done.trigger == "manual"
    assert done.requested_by.startswith("kubernetes")
    stored = running.get("reconciler.dev/v1alpha1/workflowruns", "public", "diamond-by-hand")
    assert stored is not None
    assert validate_object(stored) == []
    assert stored["metadata"]["ownerReferences"][0]["name"] == "diamond"
    refused = running.get("reconciler.dev/v1alpha1/workflowruns", "public", "nothing-by-hand")
    assert refused is not None
    assert refused["status"]["state"] == "failed"
    assert "no workflow public/no-such-workflow" in refused["status"]["reason"]
