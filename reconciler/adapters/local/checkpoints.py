"""WAL checkpoints on a thread of their own, so that no commit waits for one.

SQLite's default (``wal_autocheckpoint``) checkpoints inside the commit that
grows the write-ahead log past 1,000 pages: the commit of a busy scheduling
minute (10,000 runs, ~5,000 pages) then copies the log into the database and
fsyncs it before the runs become visible, 0.1 to 0.2 s of the scheduling lag.
Here a commit that leaves the log past ``threshold`` bytes only wakes this
thread, which runs a PASSIVE checkpoint on its own connection (writers go on
appending meanwhile). The commit path keeps a far higher autocheckpoint as a
safety net, should this thread ever fall behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SAFETY_NET_PAGES = 25_000  # wal_autocheckpoint of the committing connections (~100 MB)
WAKE_AT_BYTES = 4 << 20  # the log size (SQLite's default of 1,000 pages) that wakes the thread


class Checkpointer:
    """Checkpoints the database at ``path`` when poked with a big enough log."""

    def __init__(self, path: Path, *, threshold: int = WAKE_AT_BYTES) -> None:
        self.path = path
        self.wal = path.with_name(path.name + "-wal")
        self.threshold = threshold
        self.checkpoints = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None  # started by the first big log

    def poke(self) -> None:
        """After a commit: wake the thread if the log has grown past the threshold."""
        try:
            size = self.wal.stat().st_size
        except FileNotFoundError:
            return
        if size >= self.threshold and not self._stopping:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()
            self._wake.set()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    # the next poke tries again; meanwhile the commit path's
                    # autocheckpoint bounds the log
                    log.warning("checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()
