"""The scheduler: creates each scheduled run exactly once, at its slot.

A heap holds the next slots of the scheduled workflows (each distinct slot
once, with the workflows due at it); the loop sleeps until the earliest one.
When a slot is due, ``slots.decide`` says which slots to run and which to
record as missed (the catch-up policy), ``concurrencyPolicy`` is applied
against the runs active now, and the runs and the new ledger are stored in
one transaction. Run ids come from the slot, so a second
scheduler, a retry or a restart that decides the same slot again creates
nothing. Suspended workflows are not scheduled; resuming starts from now.

The scheduler keeps a workflow's schedule and a few fields
(``ScheduledWorkflow``), not its spec: the runs of a round copy their specs
from one read of the backend, and a workflow whose spec changed since the
last refresh is decided again right after the next.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.core.names import RunId, WorkflowKey
from reconciler.core.runs import Run, StepRun, dag_steps, new_run, skipped_run
from reconciler.core.schedules import DagShape, ScheduledWorkflow
from reconciler.core.slots import (
    CatchUpPolicy,
    Ledger,
    ScheduleDecision,
    decide,
    next_fire_times,
    schedule_hash,
    slot_run_id,
)
from reconciler.core.workflows import AppliedWorkflow
from reconciler.ports import Clock, RunBackend

log = logging.getLogger(__name__)
MAX_SLEEP = timedelta(seconds=30)  # re-check at least this often (clock jumps, changes)


@dataclass(frozen=True)
class Decided:
    """What one scheduling round created, for metrics and tests."""

    created: tuple[Run, ...]
    skipped: tuple[Run, ...]
    lags: tuple[float, ...]  # seconds between each created run's slot and its creation


_Schedule = tuple[tuple[str, ...], str]  # (crons, time zone)


class Scheduler:
    def __init__(
        self,
        backend: RunBackend,
        *,
        clock: Clock,
        policy: CatchUpPolicy = CatchUpPolicy(),  # noqa: B008 - frozen dataclass
        on_created: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.policy = policy
        self.on_created = on_created
        # Thousands of workflows share a slot: a heap of the distinct next slots, and the
        # workflows due at each (one heap entry per slot, not one per workflow).
        self._slots: list[datetime] = []
        self._due_at: dict[datetime, list[WorkflowKey]] = {}
        self._workflows: dict[WorkflowKey, ScheduledWorkflow] = {}
        self._steps: dict[DagShape, tuple[StepRun, ...]] = {}  # a new run's, per DAG shape
        self._stamp: str | None = None
        self._lock = threading.Lock()  # refresh() comes from the sync loop, tick() from ours

    def refresh(self) -> None:
        """Reload the scheduled workflows (after a sync changed something, or at start)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self._stamp = self.backend.workflows_stamp()
        self._workflows = {w.key: w for w in self.backend.scheduled_workflows()}
        self._steps = {}
        # Everything is due once now: decide() catches up or starts the ledger.
        self._slots, self._due_at = [], {}
        now = self.clock.now()
        for key in self._workflows:
            self._add(now, key)

    def _add(self, slot: datetime, key: WorkflowKey) -> None:
        keys = self._due_at.get(slot)
        if keys is None:
            keys = self._due_at[slot] = []
            heapq.heappush(self._slots, slot)
        keys.append(key)

    def tick(self) -> tuple[Decided, float]:
        """Handle every due workflow; return what was done and seconds until the next slot."""
        with self._lock:
            return self._tick()

    def _tick(self) -> tuple[Decided, float]:
        # `reconciler suspend` / `resume` / `delete` change workflows from another process:
        # a cheap stamp tells when to reload (every due slot is then decided again, harmlessly).
        if self.backend.workflows_stamp() != self._stamp:
            self._refresh()
        now = self.clock.now()
        due: list[ScheduledWorkflow] = []
        while self._slots and self._slots[0] <= now:
            for key in sorted(self._due_at.pop(heapq.heappop(self._slots))):
                workflow = self._workflows.get(key)
                if workflow is not None:
                    due.append(workflow)
        decided = self._schedule(due, now) if due else Decided((), (), ())
        # Thousands of workflows share a few schedules: compute each schedule's next slot once.
        upcoming: dict[_Schedule, datetime | None] = {}
        for workflow in due:
            which = (workflow.crons, workflow.timezone)
            if which not in upcoming:
                following = next_fire_times(which[0], which[1], after=now, count=1)
                upcoming[which] = following[0] if following else None
            slot = upcoming[which]
            if slot is not None:
                self._add(slot, workflow.key)
        if self._stamp is None:  # a workflow changed under this round: reload, decide again
            return decided, 0.0
        if not self._slots:
            return decided, MAX_SLEEP.total_seconds()
        wait = min(self._slots[0] - self.clock.now(), MAX_SLEEP).total_seconds()
        return decided, max(0.0, wait)

    def _schedule(self, due: list[ScheduledWorkflow], now: datetime) -> Decided:
        active: dict[str, list[Run]] = {}
        if any(w.policy != "Allow" for w in due):  # only Forbid and Replace look at them
            for run in self.backend.active_runs():
                active.setdefault(run.key, []).append(run)
        # decide() is pure and workflows share schedules and ledgers: decide each once.
        decisions: dict[tuple[object, ...], ScheduleDecision] = {}
        decided: list[tuple[ScheduledWorkflow, ScheduleDecision]] = []
        stored_ledgers = self.backend.get_ledgers([w.key for w in due])  # one read, not one each
        for workflow in due:
            ledger = stored_ledgers.get(workflow.key)
            crons, timezone = workflow.crons, workflow.timezone
            start = workflow.created_at
            # The ledger's fields, not the Ledger: a dataclass hashes in Python, per workflow.
            which: tuple[object, ...] = (crons, timezone, start)
            if ledger is not None:
                which = (crons, timezone, ledger.last_slot, ledger.schedule_hash)
            decision = decisions.get(which)
            if decision is None:
                decision = decide(
                    crons, timezone, ledger=ledger, now=now, start=start, policy=self.policy
                )
                decisions[which] = decision
            decided.append((workflow, decision))
        # A run carries its workflow's spec: one read for every workflow with slots to store.
        specs = self.backend.workflow_specs([w.key for w, d in decided if d.run or d.missed])
        created: list[Run] = []
        skipped: list[Run] = []
        ledgers: list[tuple[WorkflowKey, Ledger]] = []
        events: list[tuple[str, str | None, str, str]] = []
        for workflow, decision in decided:
            if not decision.run and not decision.missed:  # a ledger that starts or moves
                ledgers.append((workflow.key, decision.ledger))
                self._count_unrecorded(workflow, decision, events)
                continue
            stored = specs.get(workflow.key)
            if stored is None or stored[0] != workflow.spec_hash:
                # Changed or deleted since the last refresh: its ledger stays, and it
                # is decided again, with what is stored now, right after a refresh.
                log.info("workflow %s changed while being scheduled: reloading", workflow.key)
                self._stamp = None
                continue
            spec = stored[1]
            ledgers.append((workflow.key, decision.ledger))
            for slot in decision.missed:
                run = skipped_run(
                    self._run_for(workflow, spec, slot, now),
                    reason=f"missed: the scheduler was not running at this slot "
                    f"(catch-up policy {self.policy.mode})",
                )
                skipped.append(run)
            self._count_unrecorded(workflow, decision, events)
            if workflow.policy == "Allow":  # the common case: no other run to look at
                for slot in decision.run:
                    created.append(self._run_for(workflow, spec, slot, now))
                continue
            running = active.get(workflow.key, [])
            for slot in decision.run:
                run = self._run_for(workflow, spec, slot, now)
                if running and workflow.policy == "Forbid":
                    reason = f"Forbid: run {running[0].run_id} is still active"
                    skipped.append(skipped_run(run, reason=reason))
                    events.append((workflow.key, run.run_id, "SlotSkipped", reason))
                    continue
                if running and workflow.policy == "Replace":
                    for old in running:
                        reason = f"replaced by run {run.run_id}"
                        self.backend.request_cancel(old.workspace, old.run_id, reason=reason)
                        events.append((workflow.key, old.run_id, "RunReplaced", reason))
                    running = []
                created.append(run)
                running = [*running, run]
        results = self.backend.create_runs([*skipped, *created], ledgers=ledgers, events=events)
        fresh = [r for r, ok in zip([*skipped, *created], results, strict=True) if ok]
        new_runs = tuple(r for r in fresh if r.state == "pending")
        if new_runs and self.on_created is not None:
            self.on_created()
        lags = tuple((now - r.slot).total_seconds() for r in new_runs if r.slot is not None)
        return Decided(new_runs, tuple(r for r in fresh if r.state == "skipped"), lags)

    @staticmethod
    def _count_unrecorded(
        workflow: ScheduledWorkflow,
        decision: ScheduleDecision,
        events: list[tuple[str, str | None, str, str]],
    ) -> None:
        if decision.missed_uncounted:
            events.append(
                (
                    workflow.key,
                    None,
                    "SlotsMissed",
                    f"{decision.missed_uncounted} more slots missed (not recorded one by one)",
                )
            )

    def _run_for(
        self, workflow: ScheduledWorkflow, spec: Mapping[str, Any], slot: datetime, now: datetime
    ) -> Run:
        steps = self._steps.get(workflow.dag)
        if steps is None:  # ordered once per DAG shape, not once per run
            steps = self._steps[workflow.dag] = dag_steps(workflow.dag)
        return new_run(
            workspace=workflow.workspace,
            run_id=RunId(slot_run_id(workflow.name, slot)),
            name=workflow.name,
            trigger="schedule",
            requested_by="scheduler",
            revision=workflow.revision,
            spec=spec,
            spec_hash=workflow.spec_hash,
            now=now,
            slot=slot,
            steps=steps,
        )


def resume_from_now(backend: RunBackend, workflow: AppliedWorkflow, *, now: datetime) -> None:
    """On resume, slots missed while suspended are not caught up: the ledger moves to now."""
    schedule = workflow.spec["spec"].get("schedule")
    if schedule:
        backend.set_ledger(
            workflow.key,
            Ledger(now, schedule_hash(schedule["crons"], schedule["timezone"])),
        )
