"""The Kubernetes backend: applied state as custom resources, a ``RunBackend``.

- Workspaces are namespaces (created when missing). A Workflow is a
  ``workflows.reconciler.dev`` object applied with server-side apply under
  one field manager; its status holds the state, the conditions, the
  schedule ledger and the last run.
- The inventory is one paginated list by label selector; only objects with
  this reconciler's owner label are ever deleted, with a uid precondition.
- A run is a ``workflowruns.reconciler.dev`` object named by its run id and
  owned by its Workflow (deletion cascades to runs, and from runs to Jobs).
  Its ``reconciler.dev/state`` label lets active runs be listed cheaply.
- Events are core ``Event`` objects on the Workflow or WorkflowRun.
- Sync records and the status reporter's marks live in one ConfigMap in the
  daemon's namespace.
- The daemon never reads Secrets.

Kubernetes has no multi-object transactions: ``apply_many`` applies in
order and stops at the first failure (each apply is idempotent, so the
syncer's one-by-one retry is safe), and ``create_runs`` creates runs before
it moves ledgers (a crash in between re-decides the same slots, whose
deterministic names make the second create a harmless 409).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import secrets as random_tokens
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reconciler.adapters.kubernetes.client import (
    CONFIGMAPS,
    EVENTS,
    NAMESPACES,
    Conflict,
    KubeClient,
    NamespaceMissing,
    NotFound,
)
from reconciler.adapters.kubernetes.informers import Informer
from reconciler.adapters.kubernetes.jobs import job_name
from reconciler.adapters.kubernetes.objects import (
    API_VERSION,
    CLI_MANAGER,
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    MANAGED_SELECTOR,
    OWNER,
    PATH,
    SPEC_HASH,
    STATE,
    WORKFLOW,
    WORKFLOW_RUNS,
    WORKFLOWS,
    applied_from_object,
    applied_status,
    condition,
    ledger_from_status,
    ledger_status,
    manifest_of,
    required_time,
    run_created_at,
    run_finished_at,
    run_from_object,
    run_object,
    run_state,
    run_status,
    to_time,
    workflow_key,
    workflow_object,
    workflow_owner,
)
from reconciler.core.names import RunId, WorkflowKey
from reconciler.core.runs import Run, RunState, new_run, skipped_run
from reconciler.core.schedules import ScheduledWorkflow, scheduled_workflow
from reconciler.core.slots import Ledger, next_fire_times
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import (
    WORKFLOW_STATES,
    AppliedWorkflow,
    InventoryEntry,
    WorkflowApply,
    WorkflowState,
)
from reconciler.ports import Clock, Event, TerminalError, TransientError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LAST_SYNC = "last-sync.json"
PLAN_LIMIT = 200  # actions kept in the stored sync record (a ConfigMap holds at most 1 MiB)
_KEY_CHARS = re.compile(r"[^-._a-zA-Z0-9]")
FINISHED = ("succeeded", "failed", "cancelled", "skipped")


class KubernetesBackend:
    """A ``RunBackend`` over the Kubernetes API (see the module docstring)."""

    keeps_deleted = False  # a deleted Workflow is gone, its runs and Jobs with it

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        owner: str,
        clock: Clock,
        run_history: int = 100,
        workspaces: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        # finished WorkflowRuns kept per Workflow (etcd is no archive)
        self.run_history = run_history
        # namespaces manifests may name (empty: any but the cluster's and the daemon's own)
        self.workspaces = workspaces
        self.namespace = namespace  # the daemon's own: its state ConfigMap
        self.owner = owner
        self.clock = clock
        self.state_configmap = f"workflow-reconciler-state-{owner}"
        self._known_namespaces: set[str] = set()
        self._run_states: dict[tuple[str, str], str] = {}  # state labels we last wrote
        self._last_owned: tuple[str, dict[WorkflowKey, Obj]] | None = None
        self._cancelled: set[tuple[str, str]] = set()  # active runs whose cancel is stored
        self._statuses: dict[tuple[str, str], Obj] = {}  # statuses of active runs we wrote
        self._synced_revision: str | None = None  # of the stored record, when it succeeded
        self._lock = threading.Lock()
        self.workflows = Informer(client, WORKFLOWS, label_selector=MANAGED_SELECTOR)
        self._watching = False

    def start_watching(self, *, timeout: float = 30.0) -> None:
        """Follow Workflows with a watch, so workflows_stamp costs no request."""
        if not self._watching:
            self._watching = True
            self.workflows.start()
        if not self.workflows.wait_synced(timeout):
            raise TerminalError(
                f"the Workflow watch did not list within {timeout:.0f} s: "
                f"{self.workflows.last_error}"
            )

    def close(self) -> None:
        self.workflows.stop()

    # -- Backend: workflows ---------------------------------------------------------------

    def applied_workflows(self, *, owner: str) -> dict[WorkflowKey, AppliedWorkflow]:
        return {w.key: w for w in map(applied_from_object, self._owned(owner))}

    def inventory(self, *, owner: str) -> dict[WorkflowKey, InventoryEntry]:
        entries: dict[WorkflowKey, InventoryEntry] = {}
        for obj in self._owned(owner):
            annotations = obj["metadata"].get("annotations") or {}
            key = workflow_key(obj)
            entries[key] = InventoryEntry(
                key,
                path=str(annotations.get(PATH) or ""),
                spec_hash=str(annotations.get(SPEC_HASH) or ""),
                load_spec=functools.partial(manifest_of, obj),
            )
        return entries

    def all_workflows(self, *, include_deleted: bool = False) -> list[AppliedWorkflow]:
        """Every Workflow this tool manages, by key (deleted ones no longer exist)."""
        return sorted(map(applied_from_object, self._managed()), key=lambda w: w.key)

    def workflow_states(self) -> dict[str, int]:
        """From the watch's cache while watching (no request), else one list."""
        counts: dict[str, int] = {}
        for obj in self._managed():
            state = str((obj.get("status") or {}).get("state") or "creating")
            counts[state] = counts.get(state, 0) + 1
        return counts

    def get_workflow(self, key: WorkflowKey) -> AppliedWorkflow | None:
        obj = self._get_workflow(key)
        return None if obj is None else applied_from_object(obj)

    def apply_workflow(self, request: WorkflowApply) -> AppliedWorkflow:
        """Server-side apply, then the status; no write when hash, path and owner match."""
        with _conflict_is_transient(f"applying workflow {request.desired.key}"):
            return self._apply(request, self._get_workflow(request.desired.key))

    def apply_many(
        self, requests: Sequence[WorkflowApply], *, read_back: bool = True
    ) -> list[AppliedWorkflow]:
        """Every owner is checked before anything is written (one list); then each request is
        applied in order. Kubernetes has no transactions: a fault midway leaves the earlier
        ones applied, which is safe as every apply is idempotent."""
        if not requests:
            return []
        if len(requests) == 1:
            existing = {requests[0].desired.key: self._get_workflow(requests[0].desired.key)}
        else:
            items, _ = self.client.list(WORKFLOWS, label_selector=MANAGED_SELECTOR)
            existing = {workflow_key(obj): obj for obj in items}
        for request in requests:
            self._check_owner(request, existing.get(request.desired.key))
        applied = []
        for request in requests:
            result = self._apply(request, existing.get(request.desired.key))
            existing[request.desired.key] = None  # a repeated key: apply (idempotently) again
            applied.append(result)
        return applied if read_back else []

    def _check_workspace(self, workspace: str) -> None:
        """Steps run in their workspace's namespace and may name its Secrets: a manifest must
        not reach the cluster's own namespaces, nor the daemon's (its git credentials)."""
        reserved = {"kube-system", "kube-public", "kube-node-lease", self.namespace}
        if workspace in reserved or (self.workspaces and workspace not in self.workspaces):
            allowed = ", ".join(sorted(self.workspaces)) or f"any but {', '.join(sorted(reserved))}"
            raise TerminalError(
                f"workspace {workspace!r} may not hold workflows here (allowed: {allowed}); "
                "map the manifest's directory to another workspace in .reconciler.yaml, or "
                "ask the operator to add it to kube_workspaces"
            )

    def _check_owner(self, request: WorkflowApply, existing: Obj | None) -> None:
        if existing is None:
            return
        owner = workflow_owner(existing)
        if owner != request.owner:
            desired = request.desired
            raise TerminalError(
                f"workflow {desired.key} ({desired.path}) belongs to owner {owner!r}, not "
                f"{request.owner!r}; a reconciler never takes over another owner's "
                "workflow: delete it under its owner first, or rename it"
            )

    def _apply(self, request: WorkflowApply, existing: Obj | None) -> AppliedWorkflow:
        desired = request.desired
        self._check_workspace(desired.workspace)
        self._check_owner(request, existing)
        if existing is not None:
            current = applied_from_object(existing)
            if current.spec_hash == desired.spec_hash and current.path == desired.path:
                return current
        self._ensure_namespace(desired.workspace)
        applied = self.client.apply(
            WORKFLOWS,
            desired.workspace,
            desired.name,
            workflow_object(request),
            manager=FIELD_MANAGER,
        )
        status = applied_status(applied, request, now=self.clock.now())
        stored = self.client.merge_patch(
            WORKFLOWS, desired.workspace, desired.name, {"status": status}, sub="status"
        )
        self._wrote(stored)
        return applied_from_object(stored)

    def delete_workflow(self, key: WorkflowKey, *, owner: str) -> None:
        """Delete an owned Workflow (its runs and Jobs follow); nothing when it is gone."""
        obj = self._get_workflow(key)
        if obj is None:
            return
        if workflow_owner(obj) != owner:
            raise TerminalError(
                f"workflow {key} belongs to owner {workflow_owner(obj)!r}, not {owner!r}: "
                "only its owner deletes it"
            )
        workspace, name = key.split("/", 1)
        with _conflict_is_transient(f"deleting workflow {key}"):
            self.client.delete(WORKFLOWS, workspace, name, uid=str(obj["metadata"]["uid"]))
        self.workflows.forget((workspace, name))
        with self._lock:
            if self._last_owned is not None:
                self._last_owned[1].pop(key, None)

    def set_suspended(self, key: WorkflowKey, suspended: bool) -> AppliedWorkflow:
        obj = self._live_workflow(key)
        if bool((obj.get("spec") or {}).get("suspend")) == suspended:
            return applied_from_object(obj)
        workspace, name = key.split("/", 1)
        stored = self.client.merge_patch(
            WORKFLOWS, workspace, name, {"spec": {"suspend": suspended}}, field_manager=CLI_MANAGER
        )
        self._wrote(stored)
        if suspended:  # no next run while suspended (resuming: the scheduler sets it again)
            return self._patch_workflow_status(key, {"nextRunTime": None})
        return applied_from_object(stored)

    def set_state(self, key: WorkflowKey, state: WorkflowState) -> AppliedWorkflow:
        if state not in WORKFLOW_STATES:
            raise ValueError(f"unknown workflow state {state!r}; one of {WORKFLOW_STATES}")
        if state == "deleted":
            raise ValueError("set_state cannot delete; use delete_workflow(key, owner=...)")
        obj = self._live_workflow(key)
        if (obj.get("status") or {}).get("state") == state:
            return applied_from_object(obj)
        return self._patch_workflow_status(
            key, {"state": state, "stateSince": to_time(self.clock.now())}
        )

    def report_problems(self, problems: Mapping[WorkflowKey, str], *, owner: str) -> None:
        """Condition Stalled (and Ready False) on each workflow git cannot update, with an
        event; cleared when it is fine again. Uses the inventory this pass listed."""
        with self._lock:
            listed = self._last_owned
        owned = list(listed[1].values()) if listed and listed[0] == owner else self._owned(owner)
        now = self.clock.now()
        for obj in owned:
            key = workflow_key(obj)
            conditions = {
                c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or ()
            }
            stalled = conditions.get("Stalled") or {}
            was = stalled.get("message") if stalled.get("status") == "True" else None
            message = problems.get(key)
            if message == was:
                continue
            generation = int(obj["metadata"].get("generation") or 1)
            if message is not None:
                fresh = [
                    condition(
                        "Ready",
                        False,
                        reason="Stalled",
                        message=message,
                        now=now,
                        generation=generation,
                    ),
                    condition(
                        "Reconciling",
                        False,
                        reason="Stalled",
                        message="",
                        now=now,
                        generation=generation,
                    ),
                    condition(
                        "Stalled",
                        True,
                        reason="GitNotApplicable",
                        message=message,
                        now=now,
                        generation=generation,
                    ),
                ]
                self.add_event(key, None, "Stalled", message)
            else:
                fresh = [
                    condition(
                        "Ready",
                        True,
                        reason="Applied",
                        message="as git says",
                        now=now,
                        generation=generation,
                    ),
                    condition(
                        "Reconciling",
                        False,
                        reason="Applied",
                        message="",
                        now=now,
                        generation=generation,
                    ),
                    condition(
                        "Stalled",
                        False,
                        reason="Applied",
                        message="",
                        now=now,
                        generation=generation,
                    ),
                ]
                self.add_event(key, None, "Recovered", "applied as git says again")
            try:
                self._patch_workflow_status(key, {"conditions": fresh})
            except TerminalError:
                log.info("workflow %s went away while reporting its problem", key)

    # -- sync records and values (one ConfigMap) ------------------------------------------

    def record_sync(self, record: SyncRecord) -> None:
        """Store the record, unless the pass changed nothing at a revision the stored record
        already shows synced: a no-op sync makes no write request."""
        if self._synced_revision is None:
            last = self.last_sync()
            self._synced_revision = (
                (last.revision or "") if last and last.result == "succeeded" else ""
            )
        if (
            record.result == "succeeded"
            and not record.plan
            and not record.errors
            and record.revision == self._synced_revision
        ):
            return
        self._synced_revision = (record.revision or "") if record.result == "succeeded" else ""
        data = {
            "started_at": to_time(record.started_at),
            "finished_at": to_time(record.finished_at),
            "revision": record.revision,
            "result": record.result,
            "summary": record.summary,
            "plan": record.plan[:PLAN_LIMIT],
            "plan_truncated": max(0, len(record.plan) - PLAN_LIMIT),
            "errors": record.errors[:PLAN_LIMIT],
            "message": record.message,
            "source": record.source,
        }
        self._set_data({LAST_SYNC: json.dumps(data, sort_keys=True)})

    def last_sync(self) -> SyncRecord | None:
        text = self._data().get(LAST_SYNC)
        if text is None:
            return None
        data = json.loads(text)
        return SyncRecord(
            started_at=required_time(data["started_at"], "sync record started_at"),
            finished_at=required_time(data["finished_at"], "sync record finished_at"),
            revision=data.get("revision"),
            result=data["result"],
            summary=data.get("summary") or {},
            plan=data.get("plan") or [],
            errors=data.get("errors") or [],
            message=data.get("message") or "",
            source=data.get("source") or {},
        )

    def get_value(self, key: str) -> str | None:
        return self._data().get(_data_key(key))

    def set_value(self, key: str, value: str) -> None:
        self._set_data({_data_key(key): value})

    # -- RunBackend ---------------------------------------------------------------------------

    def workflows_stamp(self) -> str:
        """A digest of every Workflow's identity, generation, spec hash, path, suspension and
        state (with when it was set).

        Run, ledger and last-run writes do not change it. Read from the watch's cache
        (no request) while watching, else from one list.
        """
        parts = sorted(_stamp_part(obj) for obj in self._managed())
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def scheduled_workflows(self) -> list[ScheduledWorkflow]:
        """From the watch's cache while watching (no request), else one list."""
        shared: dict[Any, Any] = {}
        found: list[ScheduledWorkflow] = []
        for obj in self._managed():
            if (obj.get("spec") or {}).get("suspend"):
                continue
            workflow = applied_from_object(obj)  # one manifest copy at a time
            scheduled = scheduled_workflow(
                key=workflow.key,
                workspace=workflow.workspace,
                name=workflow.name,
                revision=workflow.revision,
                spec_hash=workflow.spec_hash,
                created_at=workflow.created_at,
                spec=workflow.spec,
                shared=shared,
            )
            if scheduled is not None:
                found.append(scheduled)
        return sorted(found, key=lambda w: w.key)

    def workflow_specs(
        self, keys: Sequence[WorkflowKey]
    ) -> dict[WorkflowKey, tuple[str, Mapping[str, Any]]]:
        """From the watch's cache while watching (no request), else one list."""
        wanted = set(keys)
        if not wanted:
            return {}
        specs: dict[WorkflowKey, tuple[str, Mapping[str, Any]]] = {}
        for obj in self._managed():
            key = workflow_key(obj)
            if key in wanted:
                annotations = obj["metadata"].get("annotations") or {}
                specs[key] = (str(annotations.get(SPEC_HASH) or ""), manifest_of(obj))
        return specs

    def create_runs(
        self,
        runs: Sequence[Run],
        *,
        ledgers: Sequence[tuple[WorkflowKey, Ledger]] = (),
        events: Sequence[tuple[str, str | None, str, str]] = (),
    ) -> list[bool]:
        """Create the runs that do not exist (409: it exists), then move the ledgers."""
        for run in runs:
            _require_aware(run)
        for _, ledger in ledgers:
            if ledger.last_slot.tzinfo is None:
                raise TerminalError("a schedule ledger without a time zone: refused")
        created: list[bool] = []
        uids: dict[WorkflowKey, str | None] = {}
        for run in runs:
            if run.key not in uids:
                workflow = self._recent_workflow(run.key)
                uids[run.key] = None if workflow is None else str(workflow["metadata"]["uid"])
            created.append(self._create_run(run, uids[run.key]))
        for workflow_key_, ledger in ledgers:
            self._patch_workflow_status(workflow_key_, self._ledger_fields(workflow_key_, ledger))
        for event_key, run_id, kind, message in events:
            self.add_event(event_key, run_id, kind, message)
        return created

    def save_run(
        self,
        run: Run,
        *,
        steps: Sequence[str] | None = None,
        event: tuple[str, str] | None = None,
        pids: Mapping[str, int] | None = None,
    ) -> None:
        """Write the run's status with the steps named (all when None; a merge patch replaces
        the steps list whole, so unnamed steps keep what was stored), its state label when the
        state changed, the event, and the Workflow's last run when the run ended."""
        _require_aware(run)
        status = run_status(run, jobs=_job_names(run))
        if steps is not None:
            named = set(steps)
            stored = self._stored_steps(run)
            status["steps"] = [
                new if new["name"] in named or new["name"] not in stored else stored[new["name"]]
                for new in status["steps"]
            ]
        try:
            self.client.merge_patch(
                WORKFLOW_RUNS, run.workspace, run.run_id, {"status": status}, sub="status"
            )
        except NotFound:
            raise TerminalError(f"no run {run.workspace}/{run.run_id} to save") from None
        with self._lock:
            if run.active:
                self._statuses[(run.workspace, run.run_id)] = status
            else:
                self._statuses.pop((run.workspace, run.run_id), None)
        ident = (run.workspace, run.run_id)
        patch: Obj = {}
        with self._lock:
            if self._run_states.get(ident) != run.state:
                patch["metadata"] = {"labels": {STATE: run.state}}
            if run.cancel_requested and ident not in self._cancelled:
                patch["spec"] = {"cancel": True}  # a cancel never goes back down
        if patch:
            self.client.merge_patch(WORKFLOW_RUNS, run.workspace, run.run_id, patch)
        if "metadata" in patch:
            self._refresh_active_runs(run.key)
        with self._lock:
            if run.active:
                self._run_states[ident] = run.state
                if run.cancel_requested:
                    self._cancelled.add(ident)
            else:
                self._run_states.pop(ident, None)
                self._cancelled.discard(ident)
        if event is not None:
            self.add_event(run.key, run.run_id, event[0], event[1])
        if not run.active:
            self._record_last_run(run)
            self._prune_runs(run.key)

    def _stored_steps(self, run: Run) -> dict[str, Obj]:
        """The steps as last stored: from what we wrote (we are the only writer of a run's
        status), else read."""
        with self._lock:
            cached = self._statuses.get((run.workspace, run.run_id))
        if cached is None:
            obj = self.client.get(WORKFLOW_RUNS, run.workspace, run.run_id)
            if obj is None:
                raise TerminalError(f"no run {run.workspace}/{run.run_id} to save")
            stored_steps = (obj.get("status") or {}).get("steps")
            if not stored_steps:  # never written: every step as created
                created = run_from_object(obj)
                stored_steps = run_status(created)["steps"]
            cached = {"steps": stored_steps}
        return {str(step["name"]): step for step in cached.get("steps") or ()}

    def get_run(self, workspace: str, run_id: str) -> Run | None:
        """The run; None also for a WorkflowRun asked for but not filled in yet."""
        obj = self.client.get(WORKFLOW_RUNS, workspace, run_id)
        if obj is None or STATE not in ((obj.get("metadata") or {}).get("labels") or {}):
            return None
        return run_from_object(obj)

    def runs_of(
        self, key: WorkflowKey, *, limit: int = 20, states: Sequence[RunState] | None = None
    ) -> list[Run]:
        """Runs of one workflow, newest first."""
        workspace, name = key.split("/", 1)
        selector = f"{MANAGED_SELECTOR},{WORKFLOW}={name}"
        if states is not None:
            if not states:
                return []
            selector += f",{STATE} in ({','.join(states)})"
        items, _ = self.client.list(WORKFLOW_RUNS, namespace=workspace, label_selector=selector)
        items.sort(key=lambda o: (run_created_at(o), o["metadata"]["name"]), reverse=True)
        return [run_from_object(o) for o in items[:limit]]

    def active_runs(self) -> list[Run]:
        return [run_from_object(o) for o in self._active_objects()]

    def adopt_requested_runs(self) -> list[str]:
        """Runs people asked for by creating a WorkflowRun with only ``spec.workflow`` (so
        Kubernetes RBAC decides who may trigger): fill them in as manual runs of this
        reconciler's workflows, or end them with the reason they cannot run."""
        items, _ = self.client.list(WORKFLOW_RUNS, label_selector=f"!{STATE}")
        adopted = []
        for obj in items:
            name = self._adopt(obj)
            if name is not None:
                adopted.append(name)
        return adopted

    def _adopt(self, obj: Obj) -> str | None:
        metadata = obj["metadata"]
        workspace, run_id = str(metadata["namespace"]), str(metadata["name"])
        workflow_name = str((obj.get("spec") or {}).get("workflow") or "")
        key = WorkflowKey(f"{workspace}/{workflow_name}")
        workflow = self._recent_workflow(key) if workflow_name else None
        if workflow is not None and workflow_owner(workflow) != self.owner:
            return None  # another reconciler's workflow: it adopts the run
        managers = [str(m.get("manager")) for m in metadata.get("managedFields") or ()]
        client = managers[0] if managers else "a client"
        requested_by = f"kubernetes ({client}; see the audit log)"
        if workflow is None:
            self._refuse_request(obj, f"no workflow {key!s} of this reconciler")
            return None
        applied = applied_from_object(workflow)
        run = new_run(
            workspace=workspace,
            run_id=RunId(run_id),
            name=workflow_name,
            trigger="manual",
            requested_by=requested_by,
            revision=applied.revision,
            spec=applied.spec,
            spec_hash=applied.spec_hash,
            now=self.clock.now(),
        )
        policy = (applied.spec["spec"].get("schedule") or {}).get("concurrencyPolicy", "Allow")
        active = self.runs_of(key, states=["pending", "running"]) if policy != "Allow" else []
        if active and policy == "Forbid":
            run = skipped_run(
                run, reason=f"concurrencyPolicy Forbid: run {active[0].run_id} is active"
            )
        body = run_object(run, owner=self.owner, workflow_uid=str(workflow["metadata"]["uid"]))
        body["metadata"]["resourceVersion"] = metadata["resourceVersion"]
        try:
            self.client.merge_patch(
                WORKFLOW_RUNS,
                workspace,
                run_id,
                {"metadata": body["metadata"], "spec": body["spec"]},
                field_manager=FIELD_MANAGER,
            )
        except Conflict:
            return None  # changed meanwhile: the next round looks again
        if run.state != "pending":
            self.client.merge_patch(
                WORKFLOW_RUNS, workspace, run_id, {"status": run_status(run)}, sub="status"
            )
        for old in active if policy == "Replace" else []:
            self.request_cancel(old.workspace, old.run_id, reason=f"replaced by run {run_id}")
        self.add_event(
            key, run_id, "RunTriggered", f"manual run requested by {requested_by}: {run.state}"
        )
        return run_id

    def _refuse_request(self, obj: Obj, reason: str) -> None:
        metadata = obj["metadata"]
        workspace, run_id = str(metadata["namespace"]), str(metadata["name"])
        self.client.merge_patch(
            WORKFLOW_RUNS,
            workspace,
            run_id,
            {"metadata": {"labels": {MANAGED_BY: MANAGED_BY_VALUE, STATE: "failed"}}},
        )
        self.client.merge_patch(
            WORKFLOW_RUNS,
            workspace,
            run_id,
            {"status": {"state": "failed", "reason": reason}},
            sub="status",
        )
        log.warning("WorkflowRun %s/%s refused: %s", workspace, run_id, reason)

    def active_run_flags(self) -> dict[tuple[str, str], bool]:
        if self._watching:  # the daemon: take the runs people asked for first
            self.adopt_requested_runs()
        return {
            (str(o["metadata"]["namespace"]), str(o["metadata"]["name"])): bool(
                (o.get("spec") or {}).get("cancel")
            )
            for o in self._active_objects()
        }

    def last_finished_run(self, key: WorkflowKey) -> Run | None:
        """The newest run that ran to an end (succeeded, failed or cancelled)."""
        workspace, name = key.split("/", 1)
        selector = f"{MANAGED_SELECTOR},{WORKFLOW}={name},{STATE} in (succeeded,failed,cancelled)"
        items, _ = self.client.list(WORKFLOW_RUNS, namespace=workspace, label_selector=selector)
        ended = [o for o in items if run_finished_at(o) is not None]
        if not ended:
            return None
        return run_from_object(max(ended, key=lambda o: run_finished_at(o) or _EPOCH))

    def get_ledger(self, key: WorkflowKey) -> Ledger | None:
        obj = self._get_workflow(key)
        return None if obj is None else ledger_from_status(obj.get("status") or {})

    def get_ledgers(self, keys: Sequence[WorkflowKey]) -> dict[WorkflowKey, Ledger]:
        wanted = set(keys)
        if not wanted:
            return {}
        items = self._managed()
        ledgers: dict[WorkflowKey, Ledger] = {}
        for obj in items:
            key = workflow_key(obj)
            if key in wanted and (ledger := ledger_from_status(obj.get("status") or {})):
                ledgers[key] = ledger
        return ledgers

    def set_ledger(self, key: WorkflowKey, ledger: Ledger) -> None:
        self._patch_workflow_status(key, self._ledger_fields(key, ledger))

    def add_event(self, key: str, run_id: str | None, kind: str, message: str) -> None:
        """A core Event on the WorkflowRun (or the Workflow); messages carry no secrets."""
        workspace, _, name = key.partition("/")
        if not name:
            return self._add_daemon_event(kind, message)
        involved = (
            {"kind": "WorkflowRun", "name": run_id}
            if run_id
            else {"kind": "Workflow", "name": name}
        )
        now = self.clock.now().astimezone(UTC)
        event: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{random_tokens.token_hex(8)}",
                "namespace": workspace,
                "labels": {MANAGED_BY: MANAGED_BY_VALUE, WORKFLOW: name},
            },
            "involvedObject": {"apiVersion": API_VERSION, "namespace": workspace, **involved},
            "reason": kind,
            "action": kind,
            "eventTime": to_time(now),
            "message": message[:1024],
            "type": "Warning" if "Fail" in kind or "Stalled" in kind else "Normal",
            "count": 1,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": {"component": MANAGED_BY_VALUE},
            "reportingComponent": MANAGED_BY_VALUE,
            "reportingInstance": self.owner,
        }
        try:
            self.client.create(EVENTS, workspace, event)
        except NamespaceMissing:
            log.info("event %s for %s dropped: namespace %s is gone", kind, key, workspace)
        return None

    def events(self, *, key: str | None = None, limit: int = 100) -> list[Event]:
        """Events of one workflow and its runs (or of all), newest first."""
        selector = MANAGED_SELECTOR
        namespace = None
        if key is not None and "/" in key:
            namespace, _, name = key.partition("/")
            selector += f",{WORKFLOW}={name}"
        elif key is not None:  # the reconciler's own ("sync"): on its ConfigMap
            namespace, selector = self.namespace, f"{MANAGED_SELECTOR},!{WORKFLOW}"
        items, _ = self.client.list(EVENTS, namespace=namespace, label_selector=selector)
        events = []
        for item in items:
            labels = item["metadata"].get("labels") or {}
            involved = item.get("involvedObject") or {}
            events.append(
                Event(
                    at=required_time(
                        item.get("eventTime") or item.get("lastTimestamp"), "event time"
                    ),
                    key=(
                        f"{item['metadata']['namespace']}/{labels[WORKFLOW]}"
                        if WORKFLOW in labels
                        else "sync"
                    ),
                    run_id=involved.get("name") if involved.get("kind") == "WorkflowRun" else None,
                    kind=str(item.get("reason") or ""),
                    message=str(item.get("message") or ""),
                )
            )
        events.sort(key=lambda e: e.at, reverse=True)
        return events[:limit]

    def request_cancel(self, workspace: str, run_id: str, *, reason: str) -> bool:
        """Flag an active run for cancelling (the executor acts on it); False if not active."""
        obj = self.client.get(WORKFLOW_RUNS, workspace, run_id)
        if obj is None or run_state(obj) not in ("pending", "running"):
            return False
        try:
            self.client.request(
                "PATCH",
                WORKFLOW_RUNS,
                namespace=workspace,
                name=run_id,
                body={
                    "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "spec": {"cancel": True, "cancelReason": reason},
                },
                query={"fieldManager": CLI_MANAGER},
                content_type="application/merge-patch+json",
            )
        except Conflict:
            return self.request_cancel(workspace, run_id, reason=reason)  # re-read: still active?
        return True

    def runs_finished_after(self, mark: tuple[datetime, str] | None, *, limit: int) -> list[Run]:
        """Runs that ended after mark (finished_at, "workspace/run id"), oldest first."""
        items, _ = self.client.list(
            WORKFLOW_RUNS,
            label_selector=f"{MANAGED_SELECTOR},{STATE} in ({','.join(FINISHED)})",
        )
        ended: list[tuple[datetime, str, Obj]] = []
        for obj in items:
            finished = run_finished_at(obj)
            if finished is None:
                continue
            ident = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            if mark is None or (finished, ident) > mark:
                ended.append((finished, ident, obj))
        ended.sort(key=lambda t: (t[0], t[1]))
        return [run_from_object(obj) for _, _, obj in ended[:limit]]

    def set_step_pid(self, run: Run, step: str, pid: int | None) -> None:
        """Steps here are Jobs, not local processes: there is no pid to keep."""
        return

    def step_pids(self, run: Run) -> dict[str, int]:
        """Always empty: a restarted daemon follows Jobs again instead (``reattach``)."""
        return {}

    # -- internals --------------------------------------------------------------------------

    def _owned(self, owner: str) -> list[Obj]:
        items, _ = self.client.list(WORKFLOWS, label_selector=f"{MANAGED_SELECTOR},{OWNER}={owner}")
        with self._lock:  # report_problems of the same pass reuses it (kept current by _wrote)
            self._last_owned = (owner, {workflow_key(obj): obj for obj in items})
        return items

    def _managed(self) -> list[Obj]:
        """Every managed Workflow: from the watch's cache (no request) while watching."""
        if self._watching and self.workflows.synced.is_set():
            return self.workflows.snapshot()
        items, _ = self.client.list(WORKFLOWS, label_selector=MANAGED_SELECTOR)
        return items

    def _get_workflow(self, key: WorkflowKey) -> Obj | None:
        workspace, name = key.split("/", 1)
        return self.client.get(WORKFLOWS, workspace, name)

    def _recent_workflow(self, key: WorkflowKey) -> Obj | None:
        """The Workflow from the watch's cache while watching (its uid and spec are what a
        busy minute of the scheduler needs, without a read per workflow), else read."""
        if self._watching and self.workflows.synced.is_set():
            workspace, name = key.split("/", 1)
            cached = self.workflows.cached((workspace, name))
            if cached is not None:
                return cached
        return self._get_workflow(key)

    def _live_workflow(self, key: WorkflowKey) -> Obj:
        obj = self._get_workflow(key)
        if obj is None:
            raise TerminalError(f"no workflow {key}")
        return obj

    def _patch_workflow_status(self, key: WorkflowKey, status: Obj) -> AppliedWorkflow:
        workspace, name = key.split("/", 1)
        try:
            stored = self.client.merge_patch(
                WORKFLOWS, workspace, name, {"status": status}, sub="status"
            )
        except NotFound:
            raise TerminalError(f"no workflow {key}") from None
        self._wrote(stored)
        return applied_from_object(stored)

    def _ledger_fields(self, key: WorkflowKey, ledger: Ledger) -> Obj:
        fields = ledger_status(ledger)
        obj = self._recent_workflow(key)
        schedule = (((obj or {}).get("spec") or {}).get("manifest") or {}).get("spec", {})
        schedule = (schedule or {}).get("schedule")
        if schedule:
            upcoming = next_fire_times(
                schedule["crons"], schedule["timezone"], after=ledger.last_slot, count=1
            )
            fields["nextRunTime"] = to_time(upcoming[0]) if upcoming else None
        return fields

    def _create_run(self, run: Run, workflow_uid: str | None) -> bool:
        self._ensure_namespace(run.workspace)
        try:
            self.client.create(
                WORKFLOW_RUNS,
                run.workspace,
                run_object(run, owner=self.owner, workflow_uid=workflow_uid),
            )
        except Conflict as exc:
            if exc.already_exists:
                return False
            raise
        if run.state != "pending" or run.reason:
            self.client.merge_patch(
                WORKFLOW_RUNS,
                run.workspace,
                run.run_id,
                {"status": run_status(run)},
                sub="status",
            )
        return True

    def _record_last_run(self, run: Run) -> None:
        status: Obj = {
            "lastRun": {
                "name": run.run_id,
                "result": run.state,
                "startTime": to_time(run.started_at or run.created_at),
                "completionTime": to_time(run.finished_at),
            }
        }
        try:
            self._patch_workflow_status(run.key, status)
        except TerminalError:
            log.info("workflow %s is gone: its last run %s is not recorded", run.key, run.run_id)

    def _refresh_active_runs(self, key: WorkflowKey) -> None:
        """The Workflow's status.activeRuns, after one of its runs changed state."""
        workspace, name = key.split("/", 1)
        selector = f"{MANAGED_SELECTOR},{WORKFLOW}={name},{STATE}=running"
        items, _ = self.client.list(WORKFLOW_RUNS, namespace=workspace, label_selector=selector)
        items.sort(key=lambda o: (run_created_at(o), o["metadata"]["name"]))
        try:
            self._patch_workflow_status(
                key, {"activeRuns": [{"name": o["metadata"]["name"]} for o in items]}
            )
        except TerminalError:
            log.info("workflow %s is gone: its active runs are not recorded", key)

    def _prune_runs(self, key: WorkflowKey) -> None:
        """Delete the oldest finished runs of a workflow beyond run_history (Jobs follow)."""
        workspace, name = key.split("/", 1)
        selector = f"{MANAGED_SELECTOR},{WORKFLOW}={name},{STATE} in ({','.join(FINISHED)})"
        items, _ = self.client.list(WORKFLOW_RUNS, namespace=workspace, label_selector=selector)
        if len(items) <= self.run_history:
            return
        items.sort(key=lambda o: (run_finished_at(o) or _EPOCH, o["metadata"]["name"]))
        for obj in items[: len(items) - self.run_history]:
            self.client.delete(
                WORKFLOW_RUNS, workspace, obj["metadata"]["name"], uid=obj["metadata"]["uid"]
            )

    def _active_objects(self) -> list[Obj]:
        items, _ = self.client.list(
            WORKFLOW_RUNS, label_selector=f"{MANAGED_SELECTOR},{STATE} in (pending,running)"
        )
        # A daemon killed between a run's status write and its label patch leaves the label
        # behind: the status is the truth (else Forbid would wait on an ended run for ever).
        active = []
        for obj in items:
            ended = (obj.get("status") or {}).get("state")
            if ended not in FINISHED:
                active.append(obj)
            elif self._watching:  # the daemon puts the label right; read-only commands do not
                self._relabel(obj, str(ended))
        active.sort(key=lambda o: (run_created_at(o), o["metadata"]["name"]))
        return active

    def _relabel(self, obj: Obj, state: str) -> None:
        workspace, name = str(obj["metadata"]["namespace"]), str(obj["metadata"]["name"])
        log.info("run %s/%s ended %s but its state label lagged: corrected", workspace, name, state)
        try:
            self.client.merge_patch(
                WORKFLOW_RUNS, workspace, name, {"metadata": {"labels": {STATE: state}}}
            )
        except NotFound:
            return
        workflow = str((obj.get("spec") or {}).get("workflow") or "")
        self._refresh_active_runs(WorkflowKey(f"{workspace}/{workflow}"))

    def _ensure_namespace(self, workspace: str) -> None:
        if workspace in self._known_namespaces:
            return
        if self.client.get(NAMESPACES, None, workspace) is None:
            try:
                self.client.create(
                    NAMESPACES,
                    None,
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {
                            "name": workspace,
                            "labels": {MANAGED_BY: MANAGED_BY_VALUE},
                        },
                    },
                )
                log.info("created namespace %s for workspace %s", workspace, workspace)
            except Conflict as exc:
                if not exc.already_exists:  # a conflict is no proof that it exists
                    raise
                log.debug("namespace %s was created meanwhile", workspace)
        self._known_namespaces.add(workspace)

    def _data(self) -> dict[str, str]:
        obj = self.client.get(CONFIGMAPS, self.namespace, self.state_configmap)
        return dict((obj or {}).get("data") or {})

    def _set_data(self, data: dict[str, str]) -> None:
        try:
            self.client.merge_patch(
                CONFIGMAPS, self.namespace, self.state_configmap, {"data": data}
            )
        except NotFound:
            self._ensure_namespace(self.namespace)
            try:
                self.client.create(
                    CONFIGMAPS,
                    self.namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": self.state_configmap,
                            "namespace": self.namespace,
                            "labels": {MANAGED_BY: MANAGED_BY_VALUE, OWNER: self.owner},
                        },
                        "data": data,
                    },
                )
            except Conflict as exc:  # created meanwhile by another replica: patch that one
                if not exc.already_exists:
                    raise
                self.client.merge_patch(
                    CONFIGMAPS, self.namespace, self.state_configmap, {"data": data}
                )

    def _add_daemon_event(self, kind: str, message: str) -> None:
        """An event about the reconciler itself: on its state ConfigMap."""
        self._ensure_namespace(self.namespace)
        now = self.clock.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.client.create(
            EVENTS,
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{self.state_configmap}.{random_tokens.token_hex(8)}",
                    "namespace": self.namespace,
                    "labels": {MANAGED_BY: MANAGED_BY_VALUE},
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "namespace": self.namespace,
                    "name": self.state_configmap,
                },
                "reason": kind,
                "action": kind,
                "eventTime": to_time(self.clock.now()),
                "message": message[:1024],
                "type": "Normal",
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": MANAGED_BY_VALUE},
                "reportingComponent": MANAGED_BY_VALUE,
                "reportingInstance": self.owner,
            },
        )

    def _wrote(self, obj: Obj) -> None:
        """Our own write, cached now: the stamp must not wait for the watch to see it."""
        self.workflows.note(obj)
        with self._lock:
            if self._last_owned is not None and workflow_owner(obj) == self._last_owned[0]:
                self._last_owned[1][workflow_key(obj)] = obj


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@contextlib.contextmanager
def _conflict_is_transient(what: str) -> Iterator[None]:
    """A 409 Conflict (not AlreadyExists) on a workflow: the sync reads it again and retries,
    this pass and the next, instead of giving up on the revision."""
    try:
        yield
    except Conflict as exc:
        if exc.already_exists:
            raise
        raise TransientError(f"{what}: {exc}; it is read again and retried") from exc


def _data_key(key: str) -> str:
    return _KEY_CHARS.sub("_", key)


def _stamp_part(obj: Obj) -> list[str]:
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return [
        str(metadata.get("namespace")),
        str(metadata.get("name")),
        str(metadata.get("uid")),
        str(metadata.get("generation")),  # spec changes (suspend, resume) even when undone
        str((obj.get("status") or {}).get("stateSince")),
        str(annotations.get(SPEC_HASH)),
        str(annotations.get(PATH)),
        str(bool((obj.get("spec") or {}).get("suspend"))),
        str((obj.get("status") or {}).get("state")),
        workflow_owner(obj),
    ]


def _require_aware(run: Run) -> None:
    moments = [run.created_at, run.slot, run.started_at, run.finished_at]
    moments += [m for s in run.steps for m in (s.started_at, s.finished_at)]
    if any(m is not None and m.tzinfo is None for m in moments):
        raise TerminalError(f"run {run.run_id} has a time without a time zone: refused")


def _job_names(run: Run) -> dict[str, str]:
    return {s.name: job_name(run.run_id, s.name) for s in run.steps if s.state != "pending"}
