"""The objects the Kubernetes backend sends, built from the seed's examples and checked
against the upstream Kubernetes schemas and the CRDs' own schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.adapters.dirsource import DirectorySource
from reconciler.adapters.kubernetes.jobs import (
    ComputeProfile,
    container_name,
    job_name,
    job_object,
    job_outcome,
    pod_exit,
)
from reconciler.adapters.kubernetes.objects import (
    applied_from_object,
    applied_status,
    run_from_object,
    run_object,
    run_status,
    workflow_object,
)
from reconciler.app.syncing import SourceLoader
from reconciler.core.names import Revision, RunId
from reconciler.core.projections import default_projections, step_environment
from reconciler.core.runs import (
    new_run,
    request_cancel,
    skipped_run,
    start_run,
    step_finished,
    step_started,
)
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply
from reconciler.ports import StepLaunch, TerminalError
from tests.kube.schemas import assert_valid, validate_object

REVISION = Revision("a" * 40)
NOW = datetime(2026, 11, 29, 1, 0, 0, 123456, tzinfo=UTC)
PROFILES = {
    "runnable-default": ComputeProfile(
        node_selector={"kubernetes.io/os": "linux"},
        tolerations=({"key": "batch", "operator": "Exists", "effect": "NoSchedule"},),
    )
}


def examples(examples_repo: Path) -> list[DesiredWorkflow]:
    source = DirectorySource(examples_repo)
    loaded = SourceLoader(source, environ={}).load(source.latest_revision())
    assert not loaded.errors
    return sorted(loaded.desired.values(), key=lambda d: d.key)


def apply_request(desired: DesiredWorkflow) -> WorkflowApply:
    return WorkflowApply(
        desired, source="https://git.example/data.git", revision=REVISION, owner="o"
    )


def stored(obj: dict, *, uid: str = "u-1", generation: int = 1) -> dict:
    """As the API server gives it back."""
    return {
        **obj,
        "metadata": {
            **obj["metadata"],
            "uid": uid,
            "generation": generation,
            "resourceVersion": "7",
            "creationTimestamp": "2026-11-29T01:00:00Z",
        },
    }


def launch_for(desired: DesiredWorkflow, step: str) -> StepLaunch:
    run = new_run(
        workspace=desired.workspace,
        run_id=RunId(f"{desired.name}-20261129t0100z"),
        name=desired.name,
        trigger="schedule",
        requested_by="scheduler",
        revision=REVISION,
        spec=desired.spec,
        spec_hash=desired.spec_hash,
        now=NOW,
        slot=NOW,
    )
    run = step_started(start_run(run, now=NOW), step, now=NOW)
    return StepLaunch(
        run,
        step,
        step_environment(run.spec, run.dag_entry(step)),
        default_projections(run, step, now=NOW),
    )


def test_every_example_becomes_a_valid_workflow_object_and_round_trips(examples_repo: Path) -> None:
    for desired in examples(examples_repo):
        request = apply_request(desired)
        obj = workflow_object(request)
        assert_valid(obj)
        back = stored(obj)
        back["status"] = applied_status(back, request, now=NOW)
        assert_valid(back)
        applied = applied_from_object(back)
        assert applied.key == desired.key
        assert applied.spec == desired.spec
        assert applied.spec_hash == desired.spec_hash
        assert (applied.path, applied.revision, applied.owner) == (desired.path, REVISION, "o")
        assert applied.state == "active"
        assert not applied.suspended


def test_a_workflow_without_status_is_creating(examples_repo: Path) -> None:
    desired = examples(examples_repo)[0]
    assert applied_from_object(stored(workflow_object(apply_request(desired)))).state == "creating"


def test_runs_round_trip_through_workflowrun_objects(examples_repo: Path) -> None:
    for desired in examples(examples_repo):
        first = desired.spec["spec"]["dag"][0]["name"]
        run = launch_for(desired, first).run
        run = step_finished(run, first, exit_code=3, now=NOW + timedelta(seconds=2))
        obj = stored(run_object(run, owner="o", workflow_uid="wf-uid"))
        obj["status"] = run_status(run, jobs={first: job_name(run.run_id, first)})
        assert_valid(obj)
        back = run_from_object(obj)
        assert back == run
        assert back.step(first).exit_code == 3


def test_skipped_and_cancelled_runs_are_valid_objects(examples_repo: Path) -> None:
    desired = examples(examples_repo)[0]
    run = launch_for(desired, desired.spec["spec"]["dag"][0]["name"]).run
    for variant in (
        skipped_run(run, reason="missed"),
        request_cancel(run, now=NOW, reason="by alice"),
    ):
        obj = stored(run_object(variant, owner="o", workflow_uid=None))
        obj["status"] = run_status(variant)
        assert_valid(obj)
        assert run_from_object(obj).state == variant.state


def test_every_step_of_every_example_becomes_a_valid_job(examples_repo: Path) -> None:
    seen = 0
    for desired in examples(examples_repo):
        for step in desired.spec["spec"]["dag"]:
            if not (step.get("spec") or {}).get("stack"):
                continue
            job = job_object(
                launch_for(desired, step["name"]),
                owner="o",
                run_uid="run-uid",
                compute=PROFILES,
                ttl=3600,
            )
            assert job["spec"]["ttlSecondsAfterFinished"] == 3600
            assert validate_object(job) == [], job
            assert len(job["metadata"]["name"]) <= 63
            assert job["spec"]["backoffLimit"] == 0
            owner = job["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"]) == ("WorkflowRun", "run-uid")
            pod = job["spec"]["template"]["spec"]
            assert pod["restartPolicy"] == "Never"
            assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
            seen += 1
    assert seen >= 5


def test_volumes_resources_and_user_map_to_the_pod(examples_repo: Path) -> None:
    desired = next(d for d in examples(examples_repo) if d.name == "customer-batch-pipeline")
    job = job_object(launch_for(desired, "extract"), owner="o", run_uid=None, compute=PROFILES)
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "volume-0",
            "persistentVolumeClaim": {"claimName": "customer-batch-shared", "readOnly": False},
        }
    ]
    container = pod["containers"][0]
    assert container["volumeMounts"] == [
        {"name": "volume-0", "mountPath": "/workspace", "readOnly": False}
    ]
    assert container["image"] == "docker.io/library/python:3.12-alpine"
    assert container["command"] == ["sh"]
    assert container["args"][0] == "-c"


def test_projections_become_secret_refs_and_expansion(examples_repo: Path) -> None:
    desired = next(d for d in examples(examples_repo) if d.name == "projected-workflow")
    job = job_object(launch_for(desired, "run-task"), owner="o", run_uid=None, compute=PROFILES)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["API_TOKEN"] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "workflow-secret", "key": "API_TOKEN"}},
    }
    assert env["WORKFLOW_ID"]["value"] == "projected-workflow-20261129t0100z"


def test_a_composite_secret_value_uses_dollar_expansion_and_literals_are_escaped(
    examples_repo: Path,
) -> None:
    desired = next(d for d in examples(examples_repo) if d.name == "projected-workflow")
    launch = launch_for(desired, "run-task")
    launch = StepLaunch(
        launch.run,
        launch.step,
        type(launch.environment)(
            (("URL", "https://u:{{.secrets.app.PASS}}@h/$(x)/{{.defaultProjections.stepName}}"),),
            {"app": "workflow-secret"},
        ),
        launch.defaults,
    )
    env = job_object(launch, owner="o", run_uid=None, compute=PROFILES)["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert env == [
        {
            "name": "RECONCILER_SECRET_0",
            "valueFrom": {"secretKeyRef": {"name": "workflow-secret", "key": "PASS"}},
        },
        {"name": "URL", "value": "https://u:$(RECONCILER_SECRET_0)@h/$$(x)/run-task"},
    ]


def test_an_unknown_compute_is_a_clear_error(examples_repo: Path) -> None:
    desired = next(d for d in examples(examples_repo) if d.name == "projected-workflow")
    with pytest.raises(TerminalError, match=r"compute 'runnable-default'.*under `compute:`"):
        job_object(launch_for(desired, "run-task"), owner="o", run_uid=None, compute={})


@pytest.mark.parametrize(
    ("run_id", "step"),
    [
        ("a" * 48 + "-20261129t0100z", "b" * 48),
        ("short-m0123456789ab", "x"),
        ("Weird_Run", "Step.Name"),
    ],
)
def test_job_names_are_deterministic_dns_labels(run_id: str, step: str) -> None:
    name = job_name(run_id, step)
    assert name == job_name(run_id, step)
    assert len(name) <= 63
    assert name.replace("-", "").isalnum()
    assert name == name.lower()
    assert job_name(run_id, step + "x") != name
    assert len(container_name(step)) <= 63


def test_job_and_pod_outcomes() -> None:
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
        }
    }
    running = {"status": {"active": 1}}
    assert job_outcome(complete).succeeded
    assert job_outcome(failed).finished
    assert not job_outcome(failed).succeeded
    assert not job_outcome(running).finished
    oom = {
        "status": {
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
            ]
        }
    }
    assert pod_exit(oom) == (137, "killed: out of memory (OOMKilled)")
