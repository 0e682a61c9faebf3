"""Watching a working tree for saved files (``--watch`` dev mode), with watchfiles."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from watchfiles import watch


def watch_directory(
    directory: Path, *, on_change: Callable[[], None], stop_event: threading.Event
) -> threading.Thread:
    """Call on_change after each burst of changes under directory, in a daemon thread."""

    def loop() -> None:
        for _changes in watch(directory, stop_event=stop_event, debounce=200, step=50):
            on_change()

    thread = threading.Thread(target=loop, name=f"watch:{directory}", daemon=True)
    thread.start()
    return thread
