"""Steps as Jobs: the ``StepRunner`` of the Kubernetes backend.

``start`` creates the step's Job (a deterministic name: a second create,
from a restarted or new leader, is a 409 and adopts the Job already there).
Results come from one watch on every Job this reconciler labelled, never
from polling Jobs one by one. A Job that ends reports once; a Job deleted
before it ended (``stop``, or by hand) reports as lost. Steps survive a
restart of the daemon: ``reattach`` tells the runner to expect the result
of a Job started before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from reconciler.adapters.kubernetes.client import (
    JOBS,
    PODS,
    PVCS,
    Conflict,
    KubeClient,
    NotFound,
)
from reconciler.adapters.kubernetes.informers import Informer
from reconciler.adapters.kubernetes.jobs import (
    ComputeProfile,
    container_name,
    job_name,
    job_object,
    job_outcome,
    pod_exit,
)
from reconciler.adapters.kubernetes.objects import (
    MANAGED_SELECTOR,
    OWNER,
    WORKFLOW_RUNS,
)
from reconciler.core.names import RunId
from reconciler.ports import Clock, StepLaunch, StepResult, TerminalError, TransientError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_Key = tuple[str, str]  # (namespace, job name)


# A pod waiting for one of these will not start by itself soon: after the grace the
# step fails with the kubelet's message (a missing Secret, an image that cannot be pulled)
# instead of hanging forever.
STUCK_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
    }
)


class KubernetesStepRunner:
    steps_outlive_daemon = True

    def __init__(
        self,
        client: KubeClient,
        *,
        owner: str,
        clock: Clock,
        compute: Mapping[str, ComputeProfile] | None = None,
        stuck_grace: float = 60.0,
        job_ttl: int | None = 86400,
    ) -> None:
        self.client = client
        self.owner = owner
        self.clock = clock
        self.compute = dict(compute or {"runnable-default": ComputeProfile()})
        self._results: queue.SimpleQueue[StepResult] = queue.SimpleQueue()
        self._awaiting: dict[_Key, tuple[str, str, str]] = {}  # job -> (workspace, run, step)
        self._lock = threading.Lock()
        self.jobs = Informer(
            client,
            JOBS,
            label_selector=f"{MANAGED_SELECTOR},{OWNER}={owner}",
            on_event=self._on_job,
        )
        self.stuck_grace = stuck_grace
        self.job_ttl = job_ttl  # finished Jobs (and pods, logs) kept this long
        self._stuck: dict[_Key, tuple[float, str]] = {}  # job -> (first seen, why)
        self.pods = Informer(
            client,
            PODS,
            label_selector=f"{MANAGED_SELECTOR},{OWNER}={owner}",
            on_event=self._on_pod,
        )
        self._watching = False

    def start_watching(self, *, timeout: float = 30.0) -> None:
        """Start the Job watch (once) and wait for its first list."""
        if not self._watching:
            self._watching = True
            self.jobs.start()
            self.pods.start()
        for informer in (self.jobs, self.pods):
            if not informer.wait_synced(timeout):
                raise TerminalError(
                    f"the {informer.resource.plural} watch did not list within {timeout:.0f} s: "
                    f"{informer.last_error}"
                )

    def close(self) -> None:
        self.jobs.stop()
        self.pods.stop()

    # -- StepRunner ---------------------------------------------------------------------

    def start(self, launch: StepLaunch) -> int | None:
        self.start_watching()
        run = launch.run
        uid = self._run_uid(run.workspace, run.run_id)
        job = job_object(
            launch, owner=self.owner, run_uid=uid, compute=self.compute, ttl=self.job_ttl
        )
        key = (run.workspace, str(job["metadata"]["name"]))
        with self._lock:
            self._awaiting[key] = (run.workspace, run.run_id, launch.step)
        try:
            created = self.client.create(JOBS, run.workspace, job)
        except Conflict as exc:
            if not exc.already_exists:
                raise
            log.info("job %s/%s exists already: adopting it", *key)
            existing = self.client.get(JOBS, run.workspace, key[1])
            if existing is not None:
                self._on_job("MODIFIED", existing)
            return None
        except TransientError:
            # The answer was lost, not necessarily the create: a Job that exists is ours.
            existing = self._job_if_reachable(run.workspace, key[1])
            if existing is not None:
                log.info("job %s/%s was created though its answer was lost", *key)
                self._on_job("MODIFIED", existing)
                return None
            with self._lock:
                self._awaiting.pop(key, None)
            raise
        except BaseException:
            with self._lock:
                self._awaiting.pop(key, None)
            raise
        self.jobs.note(created)
        return None

    def _job_if_reachable(self, workspace: str, name: str) -> Obj | None:
        try:
            return self.client.get(JOBS, workspace, name)
        except TransientError:
            return None

    def reattach(self, workspace: str, run_id: str, step: str) -> bool:
        """Expect the result of a step started before a restart; False if its Job is gone."""
        self.start_watching()
        key = (workspace, job_name(run_id, step))
        with self._lock:
            self._awaiting[key] = (workspace, run_id, step)
        job = self.client.get(JOBS, workspace, key[1])
        if job is None:
            with self._lock:
                self._awaiting.pop(key, None)
            return False
        self._on_job("MODIFIED", job)
        return True

    def stop(self, workspace: str, run_id: str, step: str) -> None:
        """Delete the Job (its pod goes with it); the watch then reports the step as ended."""
        self.client.delete(JOBS, workspace, job_name(run_id, step), propagation="Background")

    def wait_results(self, timeout: float) -> list[StepResult]:
        self._fail_stuck()
        results: list[StepResult] = []
        try:
            results.append(
                self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
            )
        except queue.Empty:
            return results
        while True:
            try:
                results.append(self._results.get_nowait())
            except queue.Empty:
                return results

    def volume_exists(self, workspace: str, volume_id: str) -> bool:
        """A volume is a PersistentVolumeClaim named by its id in the workspace."""
        return self.client.get(PVCS, workspace, volume_id) is not None

    def read_log(self, workspace: str, run_id: str, step: str) -> bytes | None:
        """The log of the step's (newest) pod; None when it has none yet."""
        pods, _ = self.client.list(
            PODS, namespace=workspace, label_selector=f"job-name={job_name(run_id, step)}"
        )
        if not pods:
            return None
        pod = max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp")))
        try:
            return self.client.text(
                PODS,
                namespace=workspace,
                name=str(pod["metadata"]["name"]),
                sub="log",
                query={"container": container_name(step)},
            )
        except NotFound:
            return None

    def stop_orphan(self, workspace: str, run_id: str, step: str, pid: int) -> bool:
        """No local processes here: a step is its Job, which ``reattach`` picks up again."""
        return False

    # -- internals ----------------------------------------------------------------------

    def _run_uid(self, workspace: str, run_id: str) -> str | None:
        run = self.client.get(WORKFLOW_RUNS, workspace, run_id)
        return None if run is None else str(run["metadata"]["uid"])

    def _on_job(self, kind: str, job: Obj) -> None:
        metadata = job.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        with self._lock:
            target = self._awaiting.get(key)
        if target is None:
            return
        if kind == "DELETED":
            outcome_reason = "the step's Job was deleted before it ended"
            self._report(key, target, None, outcome_reason)
            return
        outcome = job_outcome(job)
        if not outcome.finished:
            return
        if outcome.succeeded:
            self._report(key, target, 0, "")
            return
        code, reason = self._pod_exit(key)
        self._report(key, target, code, reason or outcome.reason)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        """Note pods that wait for something that will not come by itself."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        job = str(labels.get("job-name") or labels.get("batch.kubernetes.io/job-name") or "")
        key = (str(metadata.get("namespace")), job)
        why = "" if kind == "DELETED" else _stuck_reason(pod)
        with self._lock:
            if not why or key not in self._awaiting:
                self._stuck.pop(key, None)
            elif key not in self._stuck:
                self._stuck[key] = (self.clock.monotonic(), why)

    def _fail_stuck(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            due = [(k, why) for k, (at, why) in self._stuck.items() if now - at >= self.stuck_grace]
            for key, _ in due:
                del self._stuck[key]
        for key, why in due:
            with self._lock:
                target = self._awaiting.get(key)
            if target is None:
                continue
            log.warning("step %s of run %s cannot start: %s", target[2], target[1], why)
            self._report(key, target, None, f"the step's pod cannot start: {why}")
            self.client.delete(JOBS, key[0], key[1], propagation="Background")

    def _pod_exit(self, key: _Key) -> tuple[int | None, str]:
        """From the pod watch's cache; a list only when the watch has not seen the pod."""
        pods = [
            p
            for p in self.pods.snapshot()
            if (p.get("metadata") or {}).get("namespace") == key[0]
            and ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == key[1]
        ]
        if not any(pod_exit(p)[0] is not None for p in pods):
            pods, _ = self.client.list(PODS, namespace=key[0], label_selector=f"job-name={key[1]}")
        for pod in sorted(
            pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp"))
        ):
            code, reason = pod_exit(pod)
            if code is not None:
                return code, reason
        return None, ""

    def _report(
        self, key: _Key, target: tuple[str, str, str], code: int | None, reason: str
    ) -> None:
        with self._lock:
            if self._awaiting.pop(key, None) is None:
                return  # reported already
        workspace, run_id, step = target
        self._results.put(
            StepResult(workspace, RunId(run_id), step, code, reason, self.clock.now())
        )


def _stuck_reason(pod: Obj) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return ""
