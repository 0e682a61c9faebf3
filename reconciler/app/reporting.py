"""The status reporter: batches run reports and the sync record onto the status branch.

It is driven by durable marks, not by events held in memory: each flush
reads the runs that ended after the last pushed mark, renders their reports,
the status of the workflows they belong to, the dashboard and (when it
changed) the sync record, pushes them as one commit, and only then moves the
marks. A failed push moves nothing, so the batch is retried at the next
flush, after a restart too. Every text is redacted first: secret values the
daemon knows, and token shapes.

A run's end time is taken before its end is stored (a step's exit, a Job's
completion seen later through a watch, a skipped slot decided before its
transaction), so a run may be stored after a newer one was already
reported. The runs mark therefore looks back ``late_window`` seconds before
the newest reported end and remembers which runs in that window it already
pushed: a late run is reported, and none is reported twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from reconciler.core.redaction import Redactor
from reconciler.core.runs import Run
from reconciler.core.slots import next_fire_times
from reconciler.core.statusreports import (
    WorkflowSummary,
    keep_run_ids,
    log_tail,
    render_dashboard,
    render_run,
    render_sync,
    render_workflow_status,
    workflow_dir,
)
from reconciler.core.workflows import AppliedWorkflow
from reconciler.ports import Clock, RunBackend, StatusSink

log = logging.getLogger(__name__)
RUNS_MARK = "status.runs_mark"
SYNC_MARK = "status.sync_mark"


@dataclass(frozen=True)
class ReportingOptions:
    keep_succeeded: int = 20
    keep_failed: int = 50  # failed, cancelled and skipped runs
    last_runs: int = 10  # in each status.json
    batch_limit: int = 2000  # run reports per commit
    late_window: float = 600.0  # seconds: how much later than a newer run a run may be stored


@dataclass
class Flushed:
    commit: str
    runs: int
    sync: bool
    files: int
    pruned: list[str] = field(default_factory=list)


class StatusReporter:
    def __init__(
        self,
        backend: RunBackend,
        pusher: StatusSink,
        *,
        clock: Clock,
        read_log: Callable[[str, str, str], bytes | None],
        secret_values: Callable[[], Iterable[str]],
        options: ReportingOptions = ReportingOptions(),
    ) -> None:
        self.backend = backend
        self.pusher = pusher
        self.clock = clock
        self.read_log = read_log
        self.secret_values = secret_values
        self.options = options
        self._dashboard_done = False

    def flush(self) -> Flushed | None:
        """Push what is new; None when nothing was. Raises the pusher's errors (marks kept)."""
        mark, recent = self._runs_mark()
        window = timedelta(seconds=self.options.late_window)
        since = mark if mark is None or recent is None else (mark[0] - window, "")
        limit = self.options.batch_limit
        candidates = self.backend.runs_finished_after(since, limit=limit + len(recent or ()))
        runs = [run for run in candidates if _ident(run) not in (recent or ())][:limit]
        last_sync = self.backend.last_sync()
        sync_changed = last_sync is not None and (
            self.backend.get_value(SYNC_MARK) != last_sync.finished_at.isoformat()
        )
        if not runs and not sync_changed and self._dashboard_done:
            return None
        redact = Redactor(self.secret_values())
        workflows = {w.key: w for w in self.backend.all_workflows()}
        writes: dict[str, bytes | None] = {}
        for run in runs:
            tails = self._log_tails(run)
            writes.update(render_run(run, log_tails=tails, redact=redact))
        touched = {run.key for run in runs} if self._dashboard_done else set(workflows)
        now = self.clock.now()
        summaries = {key: self._summary(w, now) for key, w in workflows.items()}
        for key in sorted(touched):
            if key in summaries:
                writes.update(render_workflow_status(summaries[key], redact=redact))
        writes["README.md"] = render_dashboard(
            list(summaries.values()), last_sync=last_sync, now=now
        )
        if sync_changed and last_sync is not None:
            writes["sync.json"] = render_sync(last_sync, redact=redact)
        keep_s, keep_f = self.options.keep_succeeded, self.options.keep_failed
        keep = {
            key: keep_run_ids(
                self.backend.runs_of(key, limit=10 * (keep_s + keep_f)),
                succeeded=keep_s,
                failed=keep_f,
            )
            for key in touched
        }
        pruned: list[str] = []

        def prune(files: Mapping[str, str]) -> list[str]:
            pruned.clear()
            for key, kept in keep.items():
                workspace, name = key.split("/", 1)
                prefix = f"{workflow_dir(workspace, name)}/runs/"
                for path in files:
                    if path.startswith(prefix):
                        run_id = path[len(prefix) :].rsplit(".", 1)[0]
                        if run_id not in kept:
                            pruned.append(path)
            return list(pruned)

        message = _message(len(runs), sync_changed, last_sync.result if last_sync else None)
        commit = self.pusher.push(writes, message=message, prune=prune)
        if runs:
            self._move_runs_mark(mark, recent or {}, runs, window)
        if sync_changed and last_sync is not None:
            self.backend.set_value(SYNC_MARK, last_sync.finished_at.isoformat())
        self._dashboard_done = True
        log.info("status pushed: %s (%d runs, %d files)", commit[:12], len(runs), len(writes))
        return Flushed(commit, len(runs), sync_changed, len(writes), list(pruned))

    def _runs_mark(self) -> tuple[tuple[datetime, str] | None, dict[str, datetime] | None]:
        """The newest reported (end, run), and the runs reported within the late window before
        it (None for a mark written before the window existed: it is then exclusive)."""
        text = self.backend.get_value(RUNS_MARK)
        if not text:
            return None, None
        value = json.loads(text)
        mark = (datetime.fromisoformat(value[0]), str(value[1]))
        if len(value) < 3:
            return mark, None
        return mark, {str(ident): datetime.fromisoformat(end) for end, ident in value[2]}

    def _move_runs_mark(
        self,
        mark: tuple[datetime, str] | None,
        recent: dict[str, datetime],
        runs: list[Run],
        window: timedelta,
    ) -> None:
        ends = [(run.finished_at, _ident(run)) for run in runs if run.finished_at is not None]
        newest = max([*ends, *([mark] if mark is not None else [])])
        reported = {**recent, **{ident: end for end, ident in ends}}
        floor = newest[0] - window
        kept = sorted((end, ident) for ident, end in reported.items() if end >= floor)
        value = [newest[0].isoformat(), newest[1], [[end.isoformat(), i] for end, i in kept]]
        self.backend.set_value(RUNS_MARK, json.dumps(value))

    def _log_tails(self, run: Run) -> dict[str, str]:
        tails = {}
        for step in run.steps:
            data = self.read_log(run.workspace, run.run_id, step.name)
            if data:
                tails[step.name] = log_tail(data)
        return tails

    def _summary(self, workflow: AppliedWorkflow, now: datetime) -> WorkflowSummary:
        runs = self.backend.runs_of(workflow.key, limit=self.options.last_runs)
        schedule = workflow.spec["spec"].get("schedule")
        upcoming = None
        if schedule and not workflow.suspended:
            times = next_fire_times(schedule["crons"], schedule["timezone"], after=now, count=1)
            upcoming = times[0] if times else None
        return WorkflowSummary(workflow, runs, upcoming)


def _ident(run: Run) -> str:
    return f"{run.workspace}/{run.run_id}"


def _message(runs: int, sync: bool, result: str | None) -> str:
    parts = []
    if runs:
        parts.append(f"{runs} run report{'s' if runs != 1 else ''}")
    if sync:
        parts.append(f"sync {result}")
    summary = ", ".join(parts) or "dashboard"
    return f"status: {summary} [skip ci]"
