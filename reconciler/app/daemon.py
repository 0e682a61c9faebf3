"""The daemon: a sync loop, a scheduler loop and an executor loop, until told to stop.

The sync loop runs every interval (with jitter) or when poked; several pokes
during a pass (saved files under ``--watch``, webhooks) coalesce into one
more pass. After a pass that changed workflows the scheduler reloads them.
The scheduler sleeps until the next slot; the executor blocks on step
results. SIGTERM and SIGINT stop all three: the pass in flight finishes, no
new step starts, running steps get ``shutdown_grace`` seconds to end and are
then terminated (their runs fail with that reason), so nothing is left
running and nothing is orphaned.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from reconciler.app.health import Health
from reconciler.app.metrics import PrometheusRecorder
from reconciler.app.reporting import StatusReporter
from reconciler.app.running import Executor
from reconciler.app.scheduling import Scheduler
from reconciler.app.syncing import Syncer, SyncOutcome
from reconciler.ports import ReconcilerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopOptions:
    interval: float = 60.0
    jitter: float = 0.1  # share of the interval, either way
    once: bool = False
    shutdown_grace: float = 30.0
    status_flush_interval: float = 30.0
    debounce: float = 0.0  # seconds a poke waits for more (a burst of webhooks: one pass)
    clock_rate: float = 1.0  # clock seconds per real second (clock_warp); slots are in clock time


class Daemon:
    def __init__(
        self,
        syncer: Syncer,
        *,
        options: LoopOptions,
        on_outcome: Callable[[SyncOutcome], None] | None = None,
        scheduler: Scheduler | None = None,
        executor: Executor | None = None,
        reporter: StatusReporter | None = None,
        rng: random.Random | None = None,
        health: Health | None = None,
        recorder: PrometheusRecorder | None = None,
    ) -> None:
        self.syncer = syncer
        self.options = options
        self.on_outcome = on_outcome
        self.scheduler = scheduler
        self.executor = executor
        self.reporter = reporter
        self.status_failures = 0
        self.rng = rng or random.Random()
        self.stop_event = threading.Event()
        self.poke_event = threading.Event()
        self.scheduler_wake = threading.Event()
        self.passes = 0
        self.last_outcome: SyncOutcome | None = None
        self.health = health
        self.recorder = recorder
        self.leadership_lost = False

    def poke(self) -> None:
        """Ask for a pass now (coalesces with any other poke before the pass starts)."""
        self.poke_event.set()

    def lose_leadership(self) -> None:
        """Another replica may lead now: stop, and write nothing more on the way out."""
        self.leadership_lost = True
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.poke_event.set()
        self.scheduler_wake.set()

    def next_delay(self) -> float:
        spread = self.options.jitter * (2 * self.rng.random() - 1)
        return max(0.0, self.options.interval * (1 + spread))

    def run(self) -> int:
        """Loop until stopped; return 0, or 1 when ``once`` and the pass failed."""
        if self.options.once:
            try:
                outcome = self._sync()
            finally:
                self.syncer.close()
            return 0 if outcome.ok else 1
        workers = []
        if self.executor is not None:
            self._recover()
            workers.append(threading.Thread(target=self._execute, name="executor"))
        if self.scheduler is not None:
            workers.append(threading.Thread(target=self._schedule, name="scheduler"))
        reporting = None
        if self.reporter is not None:
            reporting = threading.Thread(target=self._report, name="status")
        for worker in [*workers, *([reporting] if reporting else [])]:
            worker.start()
        try:
            while not self.stop_event.is_set():
                self.poke_event.clear()
                self._sync()
                poked = self.poke_event.wait(self.next_delay())
                if poked and self.options.debounce > 0:
                    self.stop_event.wait(self.options.debounce)  # let a burst of pokes end
        finally:
            self.stop()
            for worker in workers:
                worker.join()
            if reporting is not None:
                reporting.join()
                if not self.leadership_lost:  # the new leader reports from now on
                    self.flush_status()  # what the last runs and the shutdown left
            self.syncer.close()
        log.info("daemon stopped")
        return 0

    def flush_status(self) -> None:
        """Push pending status; a failure is logged and counted, the batch stays for later."""
        assert self.reporter is not None
        try:
            self.reporter.flush()
        except ReconcilerError as exc:
            self.status_failures += 1
            log.warning("status push failed (%s); the batch is kept and retried", exc)
        except Exception:  # a bug must not end the status thread: logged with its trace
            self.status_failures += 1
            log.exception("status push broke; the batch is kept and retried")

    def _report(self) -> None:
        while not self.stop_event.wait(self.options.status_flush_interval):
            self.flush_status()

    def _recover(self) -> None:
        """The executor's start-up recovery, retried while the backend cannot answer."""
        assert self.executor is not None
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                self.executor.recover()
                return
            except ReconcilerError as exc:
                log.warning("recovering runs failed (%s); retrying in %.0f s", exc, delay)
                self.executor.runs.clear()  # what it took over so far: taken over again
                self.executor.running_steps = 0
                self.stop_event.wait(delay)
                delay = min(2 * delay, 30.0)

    def _sync(self) -> SyncOutcome:
        started = time.monotonic()
        backend_failed = False
        try:
            outcome = self.syncer.sync()
        except ReconcilerError as exc:  # the backend failed (locked, full, unreachable)
            log.warning("sync pass failed, retried next tick: %s", exc)
            outcome = SyncOutcome(None, "failed", message=f"backend unavailable: {exc}")
            backend_failed = True
        self.passes += 1
        self.last_outcome = outcome
        self._measure(outcome, time.monotonic() - started, backend_failed=backend_failed)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        changed = outcome.plan is not None and outcome.plan.has_changes
        if self.scheduler is not None and (changed or self.passes == 1):
            self.scheduler.refresh()
            self.scheduler_wake.set()
        return outcome

    def _measure(
        self, outcome: SyncOutcome, seconds: float, *, backend_failed: bool = False
    ) -> None:
        reached = backend_failed or outcome.plan is not None or outcome.result == "unchanged"
        if self.health is not None:
            self.health.record(outcome.result, source_ok=reached, message=outcome.message)
        if self.recorder is None:
            return
        self.recorder.observe("sync_duration_seconds", seconds, result=outcome.result)
        self.recorder.count("syncs_total", result=outcome.result)
        self.recorder.set("last_sync_timestamp_seconds", time.time())
        if outcome.result == "succeeded" and outcome.revision:
            self.recorder.applied_revision(outcome.revision, self.syncer.source.display_url)

    def _schedule(self) -> None:
        assert self.scheduler is not None
        while not self.stop_event.is_set():
            self.scheduler_wake.clear()
            try:
                _, wait = self.scheduler.tick()
            except ReconcilerError as exc:  # the backend: say what, no trace
                log.warning("scheduling failed (%s); retrying in 5 s", exc)
                wait = 5.0
            except Exception:
                log.exception("scheduling failed; retrying in 5 s")
                wait = 5.0
            self.scheduler_wake.wait(wait / self.options.clock_rate)

    def _execute(self) -> None:
        assert self.executor is not None
        while not self.stop_event.is_set():
            try:
                self.executor.step()
            except ReconcilerError as exc:  # the backend: say what, no trace
                log.warning("executor round failed (%s); retrying in 1 s", exc)
                self.stop_event.wait(1.0)
            except Exception:
                log.exception("executor round failed; retrying in 1 s")
                self.stop_event.wait(1.0)
        self.executor.shut_down(grace=self.options.shutdown_grace)

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current pass, then stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
