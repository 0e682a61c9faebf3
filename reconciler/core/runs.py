"""Runs of a Workflow and the state machine of their steps, as pure functions.

A run is created ``pending`` with every step ``pending``. When it starts it is
``running``; a step is ready when every step it depends on has succeeded.
A failed step fails the run: its dependents (transitively) become
``skipped``, no other step starts, steps already running finish, and the
run ends ``failed`` once nothing is running (steps that never started are
``skipped``). Cancelling marks steps that never ran ``cancelled`` and
ends the run ``cancelled`` once its running steps are stopped. A slot that
is not run at all (missed while the daemon was down, or refused by
``Forbid``) is recorded as a run in state ``skipped`` with its reason.

Every function returns a new ``Run``; the drivers store it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime
from itertools import compress
from operator import is_not
from typing import Any, Literal

from reconciler.core.dags import dependents, topological_order
from reconciler.core.names import Revision, RunId, WorkflowKey

RunState = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
StepState = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]
Trigger = Literal["schedule", "manual"]
RUN_STATES: tuple[RunState, ...] = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
)
STEP_STATES: tuple[StepState, ...] = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
)
ACTIVE_RUN_STATES: frozenset[str] = frozenset({"pending", "running"})
FINAL_RUN_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "skipped"})


@dataclass(frozen=True)
class StepRun:
    name: str
    depends: tuple[str, ...] = ()
    state: StepState = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str = ""

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Run:
    """One execution of a Workflow, with the spec it was created from."""

    workspace: str
    run_id: RunId
    name: str  # the workflow's name
    trigger: Trigger
    requested_by: str  # "scheduler", or who asked for a manual run
    revision: Revision
    spec: Mapping[str, Any]  # the normalized spec at creation: later updates do not touch it
    spec_hash: str
    created_at: datetime
    slot: datetime | None = None  # the nominal slot of a scheduled run
    state: RunState = "pending"
    reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    steps: tuple[StepRun, ...] = ()

    @property
    def key(self) -> WorkflowKey:
        return WorkflowKey(f"{self.workspace}/{self.name}")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES

    def __getstate__(self) -> dict[str, Any]:
        """Fields only: what is cached on a run (its index) is rebuilt where it is loaded."""
        return {key: value for key, value in self.__dict__.items() if key not in _DERIVED}

    @functools.cached_property
    def _index(self) -> _Index:
        """Counts and ready steps, built once; ``_with_step`` carries it forward."""
        return _Index.build(self)

    def position(self, name: str) -> int:
        try:
            return self._index.shape.positions[name]
        except KeyError:
            raise KeyError(f"run {self.run_id} has no step {name!r}") from None

    def dag_entry(self, name: str) -> Mapping[str, Any]:
        """The step's entry in ``spec.dag`` (name, depends, spec)."""
        entries = self._index.shape.dag_entries(self.spec)
        try:
            return entries[name]
        except KeyError:
            raise KeyError(f"run {self.run_id} has no step {name!r}") from None

    def step(self, name: str) -> StepRun:
        return self.steps[self.position(name)]

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


_RUN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Run) if f.default is not MISSING}


def new_run(
    *,
    workspace: str,
    run_id: RunId,
    name: str,
    trigger: Trigger,
    requested_by: str,
    revision: Revision,
    spec: Mapping[str, Any],
    spec_hash: str,
    now: datetime,
    slot: datetime | None = None,
    steps: tuple[StepRun, ...] | None = None,
) -> Run:
    """A pending run with a pending step per DAG node, in a dependency-respecting order.

    ``steps``: ``initial_steps(spec)`` when the caller has it already (the
    scheduler creates many runs of one spec), else it is computed here.
    """
    if steps is None:
        steps = initial_steps(spec)
    # Run(...) without its per-field __init__ (Run has no __post_init__), a third of the
    # cost: the scheduler creates thousands in a busy minute. Unnamed fields: their defaults.
    run: Run = object.__new__(Run)
    run.__dict__.update(
        _RUN_DEFAULTS,
        workspace=workspace,
        run_id=run_id,
        name=name,
        trigger=trigger,
        requested_by=requested_by,
        revision=revision,
        spec=spec,
        spec_hash=spec_hash,
        created_at=now,
        slot=slot,
        steps=steps,
    )
    return run


def initial_steps(spec: Mapping[str, Any]) -> tuple[StepRun, ...]:
    """A new run's steps: one pending step per DAG node, in a dependency-respecting order."""
    dag = spec["spec"]["dag"]
    return dag_steps((str(s["name"]), tuple(str(d) for d in s.get("depends") or ())) for s in dag)


def dag_steps(dag: Iterable[tuple[str, tuple[str, ...]]]) -> tuple[StepRun, ...]:
    """``initial_steps`` of a DAG given as (step, the steps it depends on) pairs."""
    depends = dict(dag)
    return tuple(StepRun(name, depends[name]) for name in topological_order(depends))


def skipped_run(run: Run, *, reason: str) -> Run:
    """A slot recorded as not run, with why."""
    return replace(
        run,
        state="skipped",
        reason=reason,
        finished_at=run.created_at,
        steps=tuple(replace(s, state="skipped", reason=reason) for s in run.steps),
    )


def start_run(run: Run, *, now: datetime) -> Run:
    if run.state != "pending":
        raise ValueError(f"run {run.run_id} is {run.state}, not pending")
    return replace(run, state="running", started_at=now, reason="")


def wait_run(run: Run, *, reason: str) -> Run:
    """Keep a pending run pending, saying what it waits for."""
    return replace(run, reason=reason)


def ready_steps(run: Run) -> list[str]:
    """Steps that may start now: pending, with every dependency succeeded.

    Once a step failed nothing new starts (steps already running finish).
    """
    if run.state != "running" or run.cancel_requested:
        return []
    index = run._index  # kept up to date step by step: this runs after every step
    if index.counts.get("failed") or not index.ready:
        return []
    positions = index.shape.positions
    return sorted(index.ready, key=positions.__getitem__)


def step_started(run: Run, name: str, *, now: datetime) -> Run:
    return _with_step(run, name, state="running", started_at=now)


def step_finished(
    run: Run, name: str, *, exit_code: int | None, now: datetime, reason: str = ""
) -> Run:
    """Record a step's end; a failure skips everything downstream of it."""
    step = run.step(name)
    succeeded = exit_code == 0 and not reason
    if run.cancel_requested and not succeeded:
        state: StepState = "cancelled"
        reason = reason or "cancelled"
    else:
        state = "succeeded" if succeeded else "failed"
        if not succeeded and not reason:
            reason = f"exited with code {exit_code}"
    run = _with_step(
        run,
        name,
        state=state,
        exit_code=exit_code,
        finished_at=now,
        reason=reason,
        started_at=step.started_at or now,
    )
    if state == "failed":
        run = _skip_downstream(run, name)
    return settle(run, now=now)


def _skip_downstream(run: Run, failed: str) -> Run:
    below = dependents({s.name: s.depends for s in run.steps})
    todo, seen = list(below[failed]), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(below[name])
    steps = tuple(
        replace(s, state="skipped", reason=f"upstream step {failed!r} failed")
        if s.name in seen and s.state == "pending"
        else s
        for s in run.steps
    )
    return replace(run, steps=steps)


def settle(run: Run, *, now: datetime) -> Run:
    """End the run when nothing runs and nothing more can start."""
    if run.state != "running":
        return run
    counts = run._index.counts
    if counts.get("running"):
        return run
    if ready_steps(run):
        return run
    if run.cancel_requested:
        steps = tuple(
            replace(s, state="cancelled", reason=s.reason or "cancelled")
            if s.state == "pending"
            else s
            for s in run.steps
        )
        return replace(run, state="cancelled", finished_at=now, steps=steps)
    if counts.get("succeeded", 0) == len(run.steps):
        return replace(run, state="succeeded", finished_at=now)
    failed = [s.name for s in run.steps if s.state == "failed"]
    steps = tuple(
        replace(s, state="skipped", reason=s.reason or "the run failed")
        if s.state == "pending"
        else s
        for s in run.steps
    )
    return replace(
        run,
        state="failed",
        finished_at=now,
        reason=run.reason or f"step(s) failed: {', '.join(failed)}",
        steps=steps,
    )


def request_cancel(run: Run, *, now: datetime, reason: str) -> Run:
    """Ask a run to stop: pending runs end at once; running ones once their steps stop."""
    if not run.active:
        return run
    if run.state == "pending":
        steps = tuple(replace(s, state="cancelled", reason=reason) for s in run.steps)
        return replace(
            run,
            state="cancelled",
            reason=reason,
            finished_at=now,
            steps=steps,
            cancel_requested=True,
        )
    run = replace(run, cancel_requested=True, reason=reason)
    return settle(run, now=now)


def fail_run(run: Run, *, now: datetime, reason: str) -> Run:
    """End an active run as failed (a prerequisite timed out, the daemon restarted...)."""
    steps = tuple(
        replace(s, state="failed", finished_at=now, reason=reason)
        if s.state == "running"
        else replace(s, state="skipped", reason=reason)
        if s.state == "pending"
        else s
        for s in run.steps
    )
    return replace(run, state="failed", reason=reason, finished_at=now, steps=steps)


def _with_step(run: Run, name: str, **changes: Any) -> Run:
    steps = list(run.steps)
    position = run.position(name)  # raises KeyError for an unknown step
    old = steps[position]
    new: StepRun = object.__new__(StepRun)  # replace(old, **changes), without its __init__
    new.__dict__.update(old.__dict__, **changes)
    steps[position] = new
    # replace(run, steps=...) without its per-field __init__ (Run has no __post_init__):
    # this runs twice per step. One step changed: update the index instead of rebuilding
    # it (a big DAG stays linear), and remember which, so changed_steps need not compare.
    after: Run = object.__new__(Run)
    after.__dict__.update(
        run.__getstate__(),
        steps=tuple(steps),
        _index=run._index.moved(old, new, steps),
        _changed=(weakref.ref(run), name),
    )
    return after


_DERIVED = frozenset({"_index", "_changed"})  # cached on a Run, not fields


def changed_steps(before: Run, after: Run) -> list[str]:
    """Steps whose state differs from ``before`` in ``after``, a run derived from it.

    Only those rows need writing, so a big DAG stays linear. Every function
    here replaces only the steps it changes, so identity is the test; when
    ``after`` is ``before`` with one step changed, that step is the answer.
    """
    if after is before:
        return []
    link = after.__dict__.get("_changed")
    if link is not None and link[0]() is before:
        return [link[1]]
    if len(before.steps) != len(after.steps):
        raise ValueError(f"run {after.run_id}: the two runs have different steps")
    # Compared in C: a big DAG has many steps.
    return [step.name for step in compress(after.steps, map(is_not, before.steps, after.steps))]


class _Shape:
    """What all runs derived from one another share: step positions and edges."""

    __slots__ = ("_dag_entries", "dependents", "positions")

    def __init__(self, steps: tuple[StepRun, ...]) -> None:
        self.positions: dict[str, int] = {step.name: i for i, step in enumerate(steps)}
        self.dependents: dict[str, list[str]] = {step.name: [] for step in steps}
        for step in steps:
            for upstream in step.depends:
                if upstream in self.dependents:
                    self.dependents[upstream].append(step.name)
        self._dag_entries: dict[str, Mapping[str, Any]] | None = None

    def dag_entries(self, spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        if self._dag_entries is None:
            self._dag_entries = {str(entry["name"]): entry for entry in spec["spec"]["dag"]}
        return self._dag_entries


class _Index:
    """How many steps are in each state, and which pending steps may start.

    Derived data, never stored or compared: built from the steps when first
    asked for, then carried from run to run by ``_with_step``, which changes
    one step and so updates only that step and its dependents.
    """

    __slots__ = ("counts", "ready", "shape")

    def __init__(self, shape: _Shape, counts: dict[str, int], ready: frozenset[str]) -> None:
        self.shape = shape
        self.counts = counts
        self.ready = ready  # pending, every dependency succeeded

    @classmethod
    def build(cls, run: Run) -> _Index:
        shape = _Shape(run.steps)
        counts: dict[str, int] = {}
        done: set[str] = set()
        for step in run.steps:
            counts[step.state] = counts.get(step.state, 0) + 1
            if step.state == "succeeded":
                done.add(step.name)
        ready = frozenset(
            step.name
            for step in run.steps
            if step.state == "pending" and done.issuperset(step.depends)
        )
        return cls(shape, counts, ready)

    def moved(self, old: StepRun, new: StepRun, steps: Sequence[StepRun]) -> _Index:
        """The index after one step changed from ``old`` to ``new`` (``steps``: all, after)."""
        counts = self.counts
        if old.state != new.state:
            counts = dict(counts)
            counts[old.state] -= 1
            counts[new.state] = counts.get(new.state, 0) + 1
        ready = self.ready
        if old.state != new.state and (
            old.state in ("pending", "succeeded") or new.state in ("pending", "succeeded")
        ):
            positions = self.shape.positions
            affected = [new.name, *self.shape.dependents[new.name]]
            now_ready = {
                name
                for name in affected
                if steps[positions[name]].state == "pending"
                and all(
                    upstream in positions and steps[positions[upstream]].state == "succeeded"
                    for upstream in steps[positions[name]].depends
                )
            }
            ready = (ready - set(affected)) | now_ready
        return _Index(self.shape, counts, ready)
