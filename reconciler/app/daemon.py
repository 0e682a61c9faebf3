"""The daemon loop: sync every interval (with jitter) or when poked, until told to stop.

A poke (a file saved under ``--watch``, a webhook) wakes the loop at
once; several pokes during a pass coalesce into one more pass. SIGTERM and
SIGINT set the stop event: the pass in flight finishes, then the loop ends.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from reconciler.app.syncing import Syncer, SyncOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopOptions:
    interval: float = 60.0
    jitter: float = 0.1  # share of the interval, either way
    once: bool = False


class Daemon:
    def __init__(
        self,
        syncer: Syncer,
        *,
        options: LoopOptions,
        on_outcome: Callable[[SyncOutcome], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.syncer = syncer
        self.options = options
        self.on_outcome = on_outcome
        self.rng = rng or random.Random()
        self.stop_event = threading.Event()
        self.poke_event = threading.Event()
        self.passes = 0

    def poke(self) -> None:
        """Ask for a pass now (coalesces with any other poke before the pass starts)."""
        self.poke_event.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.poke_event.set()

    def next_delay(self) -> float:
        spread = self.options.jitter * (2 * self.rng.random() - 1)
        return max(0.0, self.options.interval * (1 + spread))

    def run(self) -> int:
        """Loop until stopped; return 0, or 1 when ``once`` and the pass failed."""
        while not self.stop_event.is_set():
            self.poke_event.clear()
            outcome = self.syncer.sync()
            self.passes += 1
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            if self.options.once:
                return 0 if outcome.ok else 1
            self.poke_event.wait(self.next_delay())
        log.info("daemon stopped")
        return 0

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current pass, then stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
