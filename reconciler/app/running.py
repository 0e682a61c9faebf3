"""The run executor: moves runs through their state machine and starts their steps.

It holds the active runs in memory and stores every change. Each ``step``
call checks prerequisites of pending runs, starts ready steps (at most
``max_parallel`` at once across runs), and applies the results the step
runner reports; it blocks only in ``wait_results``, so a finished step is
acted on at once. Restart policy: steps are not re-attached. A run found
``running`` at start-up belonged to a daemon that died: its steps'
processes (if still alive) are stopped and the run fails with reason
"daemon restarted", so no run stays running forever and none runs twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from reconciler.core.durations import parse_duration
from reconciler.core.names import WorkflowKey
from reconciler.core.projections import default_projections, step_environment
from reconciler.core.runs import (
    Run,
    changed_steps,
    fail_run,
    ready_steps,
    request_cancel,
    start_run,
    step_finished,
    step_started,
    wait_run,
)
from reconciler.core.workflows import WorkflowState
from reconciler.ports import (
    NULL_RECORDER,
    Clock,
    ReconcilerError,
    Recorder,
    RunBackend,
    StepLaunch,
    StepResult,
    StepRunner,
)

log = logging.getLogger(__name__)
RESTART_REASON = "daemon restarted while the run was in progress"
_Key = tuple[str, str]


@dataclass(frozen=True)
class ExecutorOptions:
    max_parallel: int = 8  # steps running at once, across runs
    idle_wait: float = 0.5  # seconds to wait for results when nothing else is to do


class Executor:
    def __init__(
        self,
        backend: RunBackend,
        runner: StepRunner,
        *,
        clock: Clock,
        options: ExecutorOptions = ExecutorOptions(),
        recorder: Recorder = NULL_RECORDER,
        on_run_finished: Callable[[Run], None] | None = None,
    ) -> None:
        self.backend = backend
        self.runner = runner
        self.clock = clock
        self.options = options
        self.recorder = recorder
        self.on_run_finished = on_run_finished  # notifications; must not block
        self.runs: dict[_Key, Run] = {}
        self.running_steps = 0
        self._wake = threading.Event()
        self._reload = True
        self._reloaded_at = float("-inf")
        self._stopping = False
        self._unsaved: list[StepResult] = []  # results whose save failed: applied again

    # -- entry points -----------------------------------------------------------

    def recover(self) -> list[Run]:
        """Fail runs a dead daemon left running and stop their orphaned step processes; or,
        where steps outlive the daemon (Kubernetes Jobs), follow those runs again."""
        failed = []
        for run in self.backend.active_runs():
            if run.state != "running":
                continue
            if self._reattach(run):
                continue
            for step, pid in self.backend.step_pids(run).items():
                if self.runner.stop_orphan(run.workspace, run.run_id, step, pid):
                    log.info("stopped orphan step process %s of run %s", pid, run.run_id)
            run = fail_run(run, now=self.clock.now(), reason=RESTART_REASON)
            self.backend.save_run(run, event=("RunFailed", RESTART_REASON))
            self._update_workflow_state(run)
            self._ended(run)
            failed.append(run)
        self._reload = True
        return failed

    def _reattach(self, run: Run) -> bool:
        """Take over a running run whose steps outlive daemons (Jobs); False otherwise."""
        if not self.runner.steps_outlive_daemon:
            return False
        before = run
        for step in run.steps:
            if step.state != "running":
                continue
            if self.runner.reattach(run.workspace, run.run_id, step.name):
                self.running_steps += 1
                continue
            run = step_finished(
                run,
                step.name,
                exit_code=None,
                now=self.clock.now(),
                reason="its Job vanished while no daemon was following it",
            )
        if run is not before:
            self._store(run, steps=changed_steps(before, run))
            run = self._after_step(run)
        if run.active:
            self.runs[(run.workspace, run.run_id)] = run
        log.info("following run %s again after a restart", run.run_id)
        return True

    def notify(self) -> None:
        """New runs were created or cancelled elsewhere: reload and wake up."""
        self._reload = True
        self._wake.set()

    def step(self, *, wait: float | None = None) -> None:
        """One round: load, start what can start, apply results (waiting at most ``wait``)."""
        # Reload on notice, and every second anyway: `reconciler run` and `cancel` in
        # other processes write to the store directly.
        if self._reload or self.clock.monotonic() - self._reloaded_at > 1.0:
            self._reload = False
            self._reloaded_at = self.clock.monotonic()
            self._load_runs()
        started = self._advance()
        timeout = 0.0 if started else (self.options.idle_wait if wait is None else wait)
        if self.running_steps == 0 and timeout > 0:
            self._wake.wait(timeout)  # nothing runs: wait for notify() instead of results
            self._wake.clear()
            timeout = 0.0
        results, self._unsaved = [*self._unsaved, *self.runner.wait_results(timeout)], []
        for index, result in enumerate(results):
            try:
                self._apply_result(result)
            except ReconcilerError:
                self._unsaved.extend(results[index + 1 :])
                raise

    def run_until_idle(self, *, stop: threading.Event | None = None) -> None:
        """Step until no run is active (``reconciler run --wait`` without a daemon)."""
        while self.runs or self._reload:
            if stop is not None and stop.is_set():
                return
            self.step(wait=0.2)
            if not self.runs and not self._reload:
                return

    def shut_down(self, *, grace: float) -> None:
        """Start nothing more; give running steps ``grace`` seconds, then stop them.

        Steps that outlive the daemon (Jobs) are left running: the next leader
        follows them again (``recover``), so a rolling update kills no step.
        """
        self._stopping = True
        if self.runner.steps_outlive_daemon:
            if self.running_steps:
                log.info("%d steps keep running; the next daemon follows them", self.running_steps)
            return
        deadline = self.clock.monotonic() + grace
        while self.running_steps > 0 and self.clock.monotonic() < deadline:
            for result in self.runner.wait_results(0.2):
                self._apply_result(result)
        if self.running_steps == 0:
            return
        for run in self.runs.values():
            for step in run.steps:
                if step.state == "running":
                    log.warning("stopping step %s of run %s at shutdown", step.name, run.run_id)
                    self.runner.stop(run.workspace, run.run_id, step.name)
        deadline = self.clock.monotonic() + 15.0
        while self.running_steps > 0 and self.clock.monotonic() < deadline:
            for result in self.runner.wait_results(0.2):
                self._apply_result(result)

    def cancel(self, run: Run, *, reason: str) -> Run:
        run = request_cancel(run, now=self.clock.now(), reason=reason)
        for step in run.steps:
            if step.state == "running":
                self.runner.stop(run.workspace, run.run_id, step.name)
        self._store(run, event=("RunCancelRequested", reason))
        return run

    # -- the round ------------------------------------------------------------

    def _load_runs(self) -> None:
        """Take new runs and cancel requests from the store.

        Only the runs' flags are read: a run already held is read in full again
        only when a cancel was asked for (its steps are ours), so a big run in
        progress is not re-read every second.
        """
        for key, cancel_requested in self.backend.active_run_flags().items():
            mine = self.runs.get(key)
            if mine is not None and cancel_requested == mine.cancel_requested:
                continue
            stored = self.backend.get_run(*key)
            if stored is None or not stored.active:
                continue
            self.runs[key] = stored if mine is None else self._merge(stored)

    def _merge(self, stored: Run) -> Run:
        """A run changed elsewhere (a cancel request): take the request, keep our steps."""
        mine = self.runs[(stored.workspace, stored.run_id)]
        if stored.cancel_requested and not mine.cancel_requested:
            return self.cancel(mine, reason=stored.reason or "cancelled")
        return mine

    def _advance(self) -> bool:
        """Start pending runs whose prerequisites are met, then ready steps. True if any."""
        started = False
        for key, run in list(self.runs.items()):
            if run.state == "pending" and not self._stopping:
                run = self._check_prerequisites(run)
            # Steps that are ready together start together: one start time for the round.
            while not self._stopping and run.state == "running" and (names := ready_steps(run)):
                room = self.options.max_parallel - self.running_steps
                if room <= 0:
                    break
                now = self.clock.now()
                for name in names[:room]:
                    run = self._start_step(run, name, now=now)
                started = True
            if run.active:
                self.runs[key] = run
            else:
                self.runs.pop(key, None)
        return started

    def _check_prerequisites(self, run: Run) -> Run:
        unmet = self._unmet_prerequisites(run)
        now = self.clock.now()
        if unmet is None:
            run = start_run(run, now=now)
            if run.slot is not None:
                self.recorder.observe("schedule_lag_seconds", (now - run.slot).total_seconds())
            log.info("run started", extra={"workflow": run.key, "run": run.run_id})
            self._store(run, event=("RunStarted", f"run {run.run_id} started ({run.trigger})"))
            self._update_workflow_state(run)
            return run
        reason, deadline = unmet
        if now >= deadline:
            run = fail_run(run, now=now, reason=f"prerequisite not met in time: {reason}")
            self._store(run, event=("RunFailed", run.reason))
            self._update_workflow_state(run)
            self._ended(run)
        elif run.reason != f"waiting: {reason}":
            run = wait_run(run, reason=f"waiting: {reason}")
            self._store(run, event=("RunWaiting", run.reason))
        return run

    def _unmet_prerequisites(self, run: Run) -> tuple[str, datetime] | None:
        """The first unmet ``spec.dependencies`` entry and when waiting for it ends."""
        for dependency in run.spec["spec"].get("dependencies") or ():
            timeout = parse_duration(str(dependency.get("timeout") or "1h"))
            deadline = run.created_at + timeout
            if dependency.get("volume"):
                if not self.runner.volume_exists(run.workspace, str(dependency["volume"])):
                    return f"volume {dependency['volume']!r} does not exist yet", deadline
                continue
            workspace = str(dependency.get("workspace") or run.workspace)
            other = WorkflowKey(f"{workspace}/{dependency['workflow']}")
            workflow = self.backend.get_workflow(other)
            if workflow is None or workflow.state == "deleted":
                return f"workflow {other} does not exist", deadline
            if dependency.get("condition") == "active":
                if workflow.suspended:
                    return f"workflow {other} is suspended", deadline
                continue
            last = self.backend.last_finished_run(other)
            if last is None or last.state != "succeeded":
                state = "has not run" if last is None else f"last run {last.run_id} {last.state}"
                return f"workflow {other} {state}", deadline
            within = dependency.get("within")
            if within and last.finished_at is not None:
                age = self.clock.now() - last.finished_at
                if age > parse_duration(str(within)):
                    return (
                        f"workflow {other} last succeeded {int(age.total_seconds())} s ago, "
                        f"more than {within}",
                        deadline,
                    )
        return None

    def _start_step(self, run: Run, name: str, *, now: datetime) -> Run:
        spec = run.dag_entry(name)["spec"] or {}
        before = run
        run = step_started(run, name, now=now)
        if not spec.get("stack"):  # a no-op step: succeeds at once
            run = step_finished(run, name, exit_code=0, now=now)
            self._store(run, steps=changed_steps(before, run))
            return self._after_step(run)
        launch = StepLaunch(
            run,
            name,
            step_environment(run.spec, run.dag_entry(name)),
            default_projections(run, name, now=now),
        )
        try:
            pid = self.runner.start(launch)
        except ReconcilerError as exc:
            run = step_finished(run, name, exit_code=None, now=now, reason=str(exc))
            self._store(
                run, steps=changed_steps(before, run), event=("StepFailed", f"{name}: {exc}")
            )
            return self._after_step(run)
        self.running_steps += 1
        # One transaction for "started" and the pid (a restarted daemon stops orphans by it).
        try:
            self._store(run, steps=[name], pids=None if pid is None else {name: pid})
        except ReconcilerError as exc:  # it runs: its start is saved with its result
            log.warning("saving the start of step %s of run %s failed: %s", name, run.run_id, exc)
        return run

    def _apply_result(self, result: StepResult) -> None:
        key = (result.workspace, result.run_id)
        run = self.runs.get(key)
        if run is None:
            log.warning("result for unknown run %s/%s", result.workspace, result.run_id)
            return
        before = run
        run = step_finished(
            run,
            result.step,
            exit_code=result.exit_code,
            now=result.finished_at,
            reason=result.reason,
        )
        step = run.step(result.step)
        event = None
        context = {"workflow": run.key, "run": run.run_id, "step": result.step}
        if step.state == "failed":
            event = ("StepFailed", f"{result.step}: {step.reason}")
            log.warning("step failed: %s", step.reason, extra=context)
        else:
            log.info("step %s", step.state, extra=context)
        try:
            self._store(run, steps=changed_steps(before, run), event=event)
        except ReconcilerError:  # not lost: applied again in the next round
            self._unsaved.append(result)
            raise
        self.running_steps -= 1
        self.recorder.count("steps_total", result=step.state)
        if step.duration_seconds is not None:
            self.recorder.observe("step_duration_seconds", step.duration_seconds, result=step.state)
        self.runs[key] = run  # saved: even if what follows fails, the step is not run again
        self.runs[key] = self._after_step(run)
        if not self.runs[key].active:
            del self.runs[key]

    def _after_step(self, run: Run) -> Run:
        if not run.active:
            kind = {"succeeded": "RunSucceeded", "failed": "RunFailed"}.get(run.state, "RunEnded")
            self.backend.add_event(run.key, run.run_id, kind, f"run {run.run_id} {run.state}")
            self._update_workflow_state(run)
            self._ended(run)
        return run

    def _ended(self, run: Run) -> None:
        """Measure a run that ended and hand it to the notifier."""
        log.info(
            "run %s%s",
            run.state,
            f": {run.reason}" if run.reason else "",
            extra={"workflow": run.key, "run": run.run_id},
        )
        self.recorder.count("runs_total", result=run.state)
        if run.finished_at is not None:
            began = run.started_at or run.created_at
            seconds = (run.finished_at - began).total_seconds()
            self.recorder.observe("run_duration_seconds", seconds, result=run.state)
        if self.on_run_finished is not None:
            try:
                self.on_run_finished(run)
            except Exception:  # a notifier bug must not stop runs; it is logged with its trace
                log.exception("handing run %s to the notifier failed", run.run_id)

    def _store(
        self,
        run: Run,
        *,
        steps: list[str] | None = None,
        event: tuple[str, str] | None = None,
        pids: dict[str, int] | None = None,
    ) -> None:
        self.backend.save_run(run, steps=steps, event=event, pids=pids)

    def _update_workflow_state(self, run: Run) -> None:
        """running while a run runs; then active (scheduled) or the run's result (on demand)."""
        workflow = self.backend.get_workflow(run.key)
        if workflow is None or workflow.state == "deleted":
            return
        state: WorkflowState
        if run.state == "running":
            state = "running"
        elif any(r.state == "running" for r in self.backend.runs_of(run.key, states=["running"])):
            return
        elif workflow.spec["spec"].get("schedule"):
            state = "active"
        elif run.state == "succeeded":
            state = "succeeded"
        elif run.state == "failed":
            state = "failed"
        else:
            state = "active"
        if workflow.state != state:
            self.backend.set_state(run.key, state)
