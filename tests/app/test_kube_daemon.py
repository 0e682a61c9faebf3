"""`reconciler daemon --backend kubernetes` as real processes, with a bare git remote, against
the test API server: it applies, updates and deletes Workflows as git changes, runs steps as
Jobs in DAG order, and two replicas elect one leader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.app.gitfixtures import Remote
from tests.kube.emulator import KubeEmulator
from tests.kube.schemas import rbac_grants, validate_object

PROJECT = Path(__file__).resolve().parents[2]
WORKFLOWS = "reconciler.dev/v1alpha1/workflows"
RUNS = "reconciler.dev/v1alpha1/workflowruns"


def wait_for(condition: Callable[[], bool], *, seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def kubeconfig(kube: KubeEmulator, path: Path) -> Path:
    url = kube.url
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    return path


def start(
    remote: Remote, config: Path, state: Path, *, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RECONCILER_STATUS_ENABLED": "false",
        "RECONCILER_LEASE_DURATION": "3",
        "RECONCILER_RENEW_DEADLINE": "2",
        "RECONCILER_RETRY_PERIOD": "0.3",
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(config),
            "--repo",
            remote.url,
            "--state-dir",
            str(state),
            "--interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT,
    )


def names(kube: KubeEmulator) -> set[str]:
    return {w["metadata"]["name"] for w in kube.objects("workflows")}


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            *args,
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT,
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return err


@pytest.fixture
def cluster(kube: KubeEmulator) -> KubeEmulator:
    kube.job_outcome = kube.local_outcome()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "workflow-reconciler"}})
    return kube


def test_the_daemon_follows_git_and_runs_steps_as_jobs(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    process = start(remote, config, tmp_path / "state")
    try:
        wait_for(lambda: len(names(cluster)) == 4, what="4 workflows applied")
        text = remote.read("workflows/daily-report.yaml")
        remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", "cpu: 2"))
        remote.commit("More CPU")

        def cpu_is_2() -> bool:
            obj = cluster.get(WORKFLOWS, "public", "daily-report")
            return obj is not None and '"cpu": "2"' in json.dumps(obj["spec"])

        wait_for(cpu_is_2, what="the update applied")
        # a manual run of a DAG: Jobs in order, followed to completion
        done = cli(config, "run", "-n", "parallel-batch-pipeline", "-w", "public")
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.strip()

        def finished() -> bool:
            obj = cluster.get(RUNS, "public", run_id)
            return obj is not None and obj.get("status", {}).get("state") in ("succeeded", "failed")

        wait_for(finished, seconds=60, what="the run to end")
        run = cluster.get(RUNS, "public", run_id)
        assert run is not None
        assert run["status"]["state"] == "succeeded", run["status"]
        jobs = [r.name for r in cluster.requests if r.verb == "create" and r.plural == "jobs"]
        assert len(jobs) == len(run["status"]["steps"])
        got = cli(config, "get", "-a")
        assert got.returncode == 0, got.stderr
        assert "parallel-batch-pipeline" in got.stdout
        events = cli(config, "events", "-n", "parallel-batch-pipeline", "-w", "public")
        assert events.returncode == 0, events.stderr
        assert "RunSucceeded" in events.stdout
        # deleting the file deletes the Workflow, its runs and their Jobs
        remote.remove("workflows/parallel-batch-pipeline.yaml")
        remote.commit("Drop the pipeline")
        wait_for(lambda: "parallel-batch-pipeline" not in names(cluster), what="the delete")
        assert cluster.objects("workflowruns", "public") == []
        assert cluster.objects("jobs", "public") == []
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    assert "daemon stopped" in err
    reasons = {e["reason"] for e in cluster.objects("events")}
    assert {"Applied", "Updated", "Deleted", "RunTriggered", "RunStarted"} <= reasons
    assert "RunSucceeded" in reasons
    # every object the daemon and the CLI sent, as the server holds them, validates
    for plural in ("workflows", "workflowruns", "jobs", "events", "configmaps", "namespaces"):
        for obj in cluster.objects(plural):
            assert validate_object(obj) == [], (plural, obj["metadata"]["name"])


def test_the_requests_made_are_exactly_what_rbac_grants(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """Least privilege both ways: nothing used is missing from deploy/, and nothing granted
    is unused by a daemon run with leader election, a run and a delete."""
    from tests.kube.schemas import kustomize_build

    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    process = start(
        remote, config, tmp_path / "state", extra_env={"RECONCILER_LEADER_ELECTION": "true"}
    )
    try:
        wait_for(lambda: len(names(cluster)) == 4, what="4 workflows applied")
        done = cli(config, "run", "-n", "customer-batch-pipeline", "-w", "public", "--wait")
        assert done.returncode in (0, 1), done.stderr
        log = cli(config, "log", "-n", "customer-batch-pipeline", "-w", "public")
        assert log.returncode == 0, log.stderr
        remote.remove("workflows/daily-report.yaml")
        remote.commit("Drop the report")
        wait_for(lambda: "daily-report" not in names(cluster), what="the delete")
    finally:
        stop(process)
    grants = rbac_grants(kustomize_build(PROJECT / "deploy"))
    cluster_wide, in_own_namespace = grants["ClusterRole"], grants["Role"]
    used: set[tuple[str, str, str]] = set()
    missing: set[tuple[str, str, str, str]] = set()
    for r in cluster.requests:
        if not r.plural:
            continue
        resource = r.plural + (f"/{r.subresource}" if r.subresource else "")
        verbs = {r.verb}
        if r.content_type == "application/apply-patch+yaml" and r.status == 201:
            verbs.add("create")  # an apply that creates needs create as well
        for verb in verbs:
            item = (r.group or "", resource, verb)
            used.add(item)
            allowed = verb in cluster_wide.get(item[:2], frozenset())
            if r.namespace == "workflow-reconciler":
                allowed = allowed or verb in in_own_namespace.get(item[:2], frozenset())
            if not allowed:
                missing.add((*item, r.namespace or "cluster scope"))
    assert not missing, f"requests deploy/ does not grant: {sorted(missing)}"
    granted = {
        (group, resource, verb)
        for table in (cluster_wide, in_own_namespace)
        for (group, resource), verbs in table.items()
        for verb in verbs
    }
    unused = granted - used - EXERCISED_ELSEWHERE
    assert not unused, f"granted but never used: {sorted(unused)}"
    assert not EXERCISED_ELSEWHERE & used, "EXERCISED_ELSEWHERE can shrink"


# Granted verbs this scenario does not reach, and the tests that use them.
EXERCISED_ELSEWHERE = {
    ("batch", "jobs", "get"),  # adopting a Job after a restart: test_kube_runner
    ("batch", "jobs", "delete"),  # cancel, stuck pods: test_kube_runner
    ("reconciler.dev", "workflowruns", "delete"),  # run history: test_kube_backend
    ("", "persistentvolumeclaims", "get"),  # volume prerequisites: test_kube_runner
}


def test_two_replicas_elect_one_leader_and_the_standby_takes_over(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    env = {"RECONCILER_LEADER_ELECTION": "true"}
    port_a, port_b = free_port(), free_port()
    a = start(
        remote,
        config,
        tmp_path / "a",
        extra_env={
            **env,
            "RECONCILER_IDENTITY": "a",
            "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port_a}",
        },
    )
    wait_for(lambda: len(names(cluster)) == 4, what="the first replica leads and applies")
    b = start(
        remote,
        config,
        tmp_path / "b",
        extra_env={
            **env,
            "RECONCILER_IDENTITY": "b",
            "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port_b}",
        },
    )

    def holder() -> str | None:
        lease = cluster.get(
            "coordination.k8s.io/v1/leases", "workflow-reconciler", "workflow-reconciler-leader"
        )
        return None if lease is None else lease["spec"].get("holderIdentity")

    try:
        assert holder() == "a"
        wait_for(lambda: probe(port_b, "/readyz").get("role") == "standby", what="b's probe")
        assert probe(port_b, "/readyz")["ok"] is True  # a standby is ready: it may take over
        assert probe(port_b, "/healthz")["ok"] is True
        leader = probe(port_a, "/readyz")
        assert (leader["ok"], leader["role"], leader["last_sync"]) == (True, "leader", "succeeded")
        time.sleep(2)
        assert holder() == "a"  # b stays a standby while a renews
        writes_by_b = [r for r in cluster.requests if r.verb in ("create", "patch")]
        a.send_signal(signal.SIGKILL)  # no release: b must wait for the lease to expire
        a.wait(timeout=10)
        wait_for(lambda: holder() == "b", seconds=20, what="b to take over")
        remote.remove("workflows/daily-report.yaml")
        remote.commit("Drop the report")
        wait_for(lambda: "daily-report" not in names(cluster), what="b to reconcile")
        assert writes_by_b  # sanity: the request log is live
    finally:
        if a.poll() is None:
            a.kill()
        err = stop(b)
    assert b.returncode == 0, err
    lease = cluster.get(
        "coordination.k8s.io/v1/leases", "workflow-reconciler", "workflow-reconciler-leader"
    )
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(port: int, path: str) -> dict[str, Any]:
    """A probe's JSON answer; 503 (not ready) answers carry JSON too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as failure:
        if failure.code != 503:
            return {"status": failure.code}
        return dict(json.loads(failure.read()))
    except OSError:
        return {}  # not listening yet


def test_probes_answer_for_the_leader(cluster: KubeEmulator, tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    port = free_port()
    process = start(
        remote,
        config,
        tmp_path / "state",
        extra_env={"RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port}"},
    )
    try:
        wait_for(lambda: len(names(cluster)) == 4, what="applied")

        wait_for(lambda: probe(port, "/readyz").get("ok") is True, what="ready")
        assert probe(port, "/healthz")["ok"] is True
        assert probe(port, "/readyz")["role"] == "leader"
        assert probe(port, "/nothing") == {"status": 404}
    finally:
        stop(process)


def test_run_reports_reach_the_status_branch_without_secrets(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """The projected-workflow example on Kubernetes: its step gets the token by secretKeyRef
    (the daemon never reads it), and the report on the status branch has no log tail that
    could carry it."""
    import base64

    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "public"}})
    token = "tok-9f8e7d6c5b4a"
    cluster.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "workflow-secret", "namespace": "public"},
            "data": {"API_TOKEN": base64.b64encode(token.encode()).decode()},
        }
    )
    process = start(
        remote,
        config,
        tmp_path / "state",
        extra_env={"RECONCILER_STATUS_ENABLED": "true", "RECONCILER_STATUS_FLUSH_INTERVAL": "0.5"},
    )
    try:
        wait_for(lambda: len(names(cluster)) == 4, what="applied")
        done = cli(config, "run", "-n", "projected-workflow", "-w", "public")
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.strip()
        report = f"workflows/public/projected-workflow/runs/{run_id}.json"

        def reported() -> bool:
            found = subprocess.run(
                ["git", "cat-file", "-e", f"status:{report}"], cwd=remote.bare, capture_output=True
            )
            return found.returncode == 0

        wait_for(reported, seconds=60, what="the run report")
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    document = json.loads(
        subprocess.run(
            ["git", "show", f"status:{report}"],
            cwd=remote.bare,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert document["state"] == "succeeded", document
    assert all(step["log_tail"] == "" for step in document["steps"])
    everything = subprocess.run(
        ["git", "log", "-p", "status"], cwd=remote.bare, capture_output=True, text=True, check=True
    ).stdout
    assert token not in everything
    assert token not in err
    for plural in ("workflows", "workflowruns", "jobs", "events", "configmaps"):
        assert token not in json.dumps(cluster.objects(plural))
    job = cluster.objects("jobs", "public")[0]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "workflow-secret", "key": "API_TOKEN"}},
    } in env


def test_secrets_are_not_the_reconcilers_business_on_kubernetes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.app.cli import cli as main

    result = CliRunner().invoke(
        main, ["secret", "set", "db", "PASSWORD=x", "--backend", "kubernetes"]
    )
    assert result.exit_code == 1
    assert "kubectl create secret generic" in result.output
    assert "PASSWORD=x" not in result.output


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    done = cli(tmp_path / "no-such-kubeconfig", "get", "-a")
    assert done.returncode == 1
    assert "no usable Kubernetes configuration" in done.stderr
    assert "--kubeconfig" in done.stderr


def test_a_leader_whose_lease_is_taken_stops_and_exits_1(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    remote = Remote(tmp_path)
    remote.copy_examples()
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    process = start(
        remote, config, tmp_path / "state", extra_env={"RECONCILER_LEADER_ELECTION": "true"}
    )
    path = ("coordination.k8s.io/v1/leases", "workflow-reconciler", "workflow-reconciler-leader")
    try:
        wait_for(lambda: len(names(cluster)) == 4, what="it leads and applies")
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            lease = cluster.get(*path)
            assert lease is not None
            # another replica (say, after a network partition) holds it and renews it
            lease["spec"]["holderIdentity"] = "thief"
            lease["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            cluster.put(lease)
            time.sleep(0.2)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, err
    assert "lost the lease" in err
    lease = cluster.get(*path)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "thief"  # it did not release what it lost
