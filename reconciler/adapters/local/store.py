"""The local backend's applied state: Workflows and sync records in SQLite.

The embedded backend needs state that survives restarts, costs nothing on a
no-op pass, and can be read by a second process (the CLI next to the daemon)
while the daemon writes. SQLite in WAL mode under the state directory gives
all three. This module is the only place that speaks ``sqlite3`` for it:
every sqlite error leaves as ``TransientError`` (locked, I/O error, disk
full: retry later) or ``TerminalError``. The schema grows by numbered
migrations (``MIGRATIONS``), so later versions can add run tables to a state
directory an older reconciler wrote, and an older reconciler refuses a state
directory a newer one wrote.

Rows are never removed from ``workflows``: a deleted Workflow stays as a
tombstone (``state='deleted'``) that runs can keep referring to, and a
re-create updates that same row, so tables added later may point at
``workflows(key)`` with foreign keys.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, cast, get_args

from reconciler.adapters.local.checkpoints import SAFETY_NET_PAGES, Checkpointer
from reconciler.adapters.local.codecs import Transaction, dump_json, from_text, load_json, to_text
from reconciler.adapters.local.runstore import RunsMixin
from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.syncs import SyncRecord, SyncResult
from reconciler.core.workflows import (
    WORKFLOW_STATES,
    AppliedWorkflow,
    InventoryEntry,
    WorkflowApply,
    WorkflowState,
)
from reconciler.ports import Clock, TerminalError, TransientError

DB_NAME = "state.db"
SYNC_RETENTION = 500  # sync records kept; older ones go in the transaction adding a new one
DEFAULT_BUSY_TIMEOUT_MS = 5000

# Ordered (version, SQL script) pairs. Append only: never edit or renumber a
# migration that has shipped; add a new one instead. Each runs in its own
# transaction together with its row in schema_migrations.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE workflows (
            key TEXT PRIMARY KEY,
            workspace TEXT NOT NULL,
            name TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            source TEXT NOT NULL,
            path TEXT NOT NULL,
            revision TEXT NOT NULL,
            owner TEXT NOT NULL,
            state TEXT NOT NULL,
            suspended INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            deleted_at TEXT
        );
        CREATE INDEX workflows_owner ON workflows (owner);
        CREATE INDEX workflows_state ON workflows (state);
        CREATE TABLE syncs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            revision TEXT,
            result TEXT NOT NULL,
            summary_json TEXT NOT NULL,
            plan_json TEXT NOT NULL,
            errors_json TEXT NOT NULL,
            message TEXT NOT NULL
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE syncs ADD COLUMN source_json TEXT NOT NULL DEFAULT '{}';
        """,
    ),
    (
        3,
        """
        CREATE TABLE runs (
            workspace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            name TEXT NOT NULL,
            trigger TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            revision TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            slot TEXT,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            PRIMARY KEY (workspace, run_id)
        );
        CREATE INDEX runs_key_created ON runs (key, created_at);
        CREATE INDEX runs_state ON runs (state);
        CREATE TABLE run_steps (
            workspace TEXT NOT NULL,
            run_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            name TEXT NOT NULL,
            depends_json TEXT NOT NULL,
            state TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            exit_code INTEGER,
            reason TEXT NOT NULL,
            pid INTEGER,
            PRIMARY KEY (workspace, run_id, name),
            FOREIGN KEY (workspace, run_id) REFERENCES runs (workspace, run_id) ON DELETE CASCADE
        );
        CREATE TABLE schedule_ledger (
            key TEXT PRIMARY KEY,
            last_slot TEXT NOT NULL,
            schedule_hash TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            key TEXT NOT NULL,
            run_id TEXT,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX events_key ON events (key, id);
        """,
    ),
    (
        4,
        """
        CREATE TABLE settings_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE INDEX runs_finished ON runs (finished_at, workspace, run_id);
        """,
    ),
    (
        5,
        """
        ALTER TABLE workflows ADD COLUMN state_changed_at TEXT;
        """,
    ),
]

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)
_WORKFLOW_COLUMNS = (
    "key, workspace, name, spec_json, spec_hash, source, path, revision, owner, state, "
    "suspended, created_at, updated_at, deleted_at"
)
_SYNC_COLUMNS = (
    "id, started_at, finished_at, revision, result, summary_json, plan_json, errors_json, "
    "message, source_json"
)
_SYNC_RESULTS: frozenset[str] = frozenset(get_args(SyncResult))

# Primary result codes (the low byte of an extended code) worth retrying, and
# what to tell people about each.
_TRANSIENT_HINTS: dict[int, str] = {
    sqlite3.SQLITE_BUSY: "another connection holds a write lock; it will be retried",
    sqlite3.SQLITE_LOCKED: "a table is locked by another statement; it will be retried",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error; check the disk under it",
    sqlite3.SQLITE_FULL: "the disk is full; free space under the state directory",
}
_TRANSIENT_MESSAGES: dict[str, int] = {
    "database is locked": sqlite3.SQLITE_BUSY,
    "database table is locked": sqlite3.SQLITE_LOCKED,
    "disk i/o error": sqlite3.SQLITE_IOERR,
    "database or disk is full": sqlite3.SQLITE_FULL,
}


def latest_schema_version() -> int:
    """The schema version this code writes: the last migration's number."""
    return MIGRATIONS[-1][0]


class _Apply(Enum):
    SAME = "same"  # stored row equals the request: nothing to write
    CREATE = "create"  # no row
    RECREATE = "recreate"  # a tombstone: revive the same row
    UPDATE = "update"


@dataclass
class _Row:
    """A ``workflows`` row, as stored."""

    key: str
    owner: str
    state: str
    spec_hash: str
    path: str
    suspended: bool


class LocalStore(RunsMixin):
    """Applied state, runs and the schedule ledger in SQLite (WAL) under a state directory.

    One connection per store, shared by the daemon's threads under a lock;
    other stores (other processes) may open the same directory. ``writes``
    counts the data write transactions this store committed (schema
    migrations are not counted; ``migrations_applied`` names those), so a
    test can check that a no-op pass writes nothing.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Clock,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, not {busy_timeout_ms}")
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self.writes = 0
        self._inventories: dict[str, tuple[int, dict[WorkflowKey, InventoryEntry]]] = {}
        self.migrations_applied: tuple[int, ...] = ()
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._closed = False
        self._checkpointer = Checkpointer(self.path)
        _make_state_dir(state_dir)
        with self._sqlite_errors("open the state database"):
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # shared by threads, serialized by self._lock
            )
        try:
            self._conn.row_factory = sqlite3.Row
            self.migrations_applied = self._open_with_retries()
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._checkpointer.close()
            with self._sqlite_errors("close the state database"):
                self._conn.close()

    # -- Backend protocol -------------------------------------------------

    def applied_workflows(self, *, owner: str) -> dict[WorkflowKey, AppliedWorkflow]:
        """The inventory: every non-deleted workflow this owner applied."""
        with self._lock, self._sqlite_errors("read the inventory"):
            rows = self._conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows "
                "WHERE owner = ? AND state != 'deleted' ORDER BY key",
                (owner,),
            ).fetchall()
            return {WorkflowKey(row["key"]): self._workflow_from_row(row) for row in rows}

    def inventory(self, *, owner: str) -> dict[WorkflowKey, InventoryEntry]:
        """The inventory for planning: keys, paths and hashes; specs decoded on demand.

        Kept between calls while no other connection (a CLI command) commits, as
        ``PRAGMA data_version`` tells; this store's own applies and deletes patch it
        (every write that can change a key, path, hash, owner or deletion), and a
        failed transaction drops it. Reading 10,000 rows again was a third of a
        one-file pass.
        """
        with self._lock, self._sqlite_errors("read the inventory"):
            conn = self._conn
            marker = int(conn.execute("PRAGMA data_version").fetchone()[0])
            cached = self._inventories.get(owner)
            if cached is not None and cached[0] == marker:
                return dict(cached[1])
            rows = conn.execute(
                "SELECT key, path, spec_hash FROM workflows "
                "WHERE owner = ? AND state != 'deleted' ORDER BY key",
                (owner,),
            ).fetchall()
        entries = {
            WorkflowKey(row["key"]): InventoryEntry(
                WorkflowKey(row["key"]),
                path=row["path"],
                spec_hash=row["spec_hash"],
                load_spec=functools.partial(self._spec_of, row["key"]),
            )
            for row in rows
        }
        self._inventories = {owner: (marker, entries)}  # one owner per daemon
        return dict(entries)

    def _patch_inventory(self, owner: str, key: WorkflowKey, entry: InventoryEntry | None) -> None:
        """Keep a cached inventory equal to the rows this store is writing."""
        cached = self._inventories.get(owner)
        if cached is None:
            return
        if entry is None:
            cached[1].pop(key, None)
        else:
            cached[1][key] = entry

    def _spec_of(self, key: str) -> Mapping[str, Any]:
        workflow = self.get_workflow(WorkflowKey(key))
        if workflow is None:
            raise TerminalError(f"workflow {key} vanished from {self.path} while planning")
        return workflow.spec

    def workflows_stamp(self) -> str:
        """Changes whenever a workflow is applied, updated, suspended, resumed, deleted or
        changes state."""
        with self._lock, self._sqlite_errors("read the workflows stamp"):
            row = self._conn.execute(
                "SELECT count(*), max(updated_at), max(deleted_at), max(state_changed_at) "
                "FROM workflows"
            ).fetchone()
            return f"{row[0]}|{row[1]}|{row[2]}|{row[3]}"

    def all_workflows(self, *, include_deleted: bool = False) -> list[AppliedWorkflow]:
        """Every workflow, of any owner, ordered by key; tombstones on request."""
        where = "" if include_deleted else "WHERE state != 'deleted' "
        with self._lock, self._sqlite_errors("read workflows"):
            rows = self._conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows {where}ORDER BY key"
            ).fetchall()
            return [self._workflow_from_row(row) for row in rows]

    def workflow_states(self) -> dict[str, int]:
        with self._lock, self._sqlite_errors("count workflows"):
            rows = self._conn.execute(
                "SELECT state, count(*) FROM workflows WHERE state != 'deleted' GROUP BY state"
            ).fetchall()
            return {str(row[0]): int(row[1]) for row in rows}

    def get_workflow(self, key: WorkflowKey) -> AppliedWorkflow | None:
        """The workflow under key, a tombstone (state ``deleted``) included; None if never."""
        with self._lock, self._sqlite_errors(f"read workflow {key}"):
            return self._select_workflow(key)

    def apply_workflow(self, request: WorkflowApply) -> AppliedWorkflow:
        """Create or update; no write at all when spec hash, path and owner are unchanged."""
        return self.apply_many([request])[0]

    def apply_many(
        self, requests: Sequence[WorkflowApply], *, read_back: bool = True
    ) -> list[AppliedWorkflow]:
        """Apply every request in one transaction (all or none), in order.

        Raises TerminalError, writing nothing, when any request names a
        workflow another owner holds. When every request is a no-op, no
        transaction is opened. ``read_back=False`` returns [] instead of the
        stored rows (a cold sync of thousands has no use for them).
        """
        if not requests:
            return []
        with self._lock, self._sqlite_errors("apply workflows"):
            if all(self._decide_apply(request) is _Apply.SAME for request in requests):
                if not read_back:
                    return []
                return [self._require_workflow(request.desired.key) for request in requests]
            with self._transaction() as txn:
                now = self._now()
                for request in requests:
                    self._write_apply(txn, request, now=now)
                if not read_back:
                    return []
                # Read back inside the transaction: later requests may touch earlier keys.
                return [self._require_workflow(request.desired.key) for request in requests]

    def delete_workflow(self, key: WorkflowKey, *, owner: str) -> None:
        """Mark deleted (a tombstone with deleted_at); refuses a workflow of another owner.

        Deleting a missing or already deleted workflow writes nothing.
        """
        with self._lock, self._sqlite_errors(f"delete workflow {key}"):
            if not self._needs_delete(key, owner=owner):
                return
            with self._transaction() as txn:
                if not self._needs_delete(key, owner=owner):  # another store got there first
                    return
                now = to_text(self._now())
                self._patch_inventory(owner, key, None)
                txn.write(
                    "UPDATE workflows SET state = 'deleted', deleted_at = ?, updated_at = ? "
                    "WHERE key = ?",
                    (now, now, key),
                )

    def report_problems(self, problems: Mapping[WorkflowKey, str], *, owner: str) -> None:
        """Kept as ``stalled/<key>`` values; a new or changed problem, and a recovery, is an
        event (``reconciler events``)."""
        with self._lock, self._sqlite_errors("read stalled workflows"):
            rows = self._conn.execute(
                # a range on the primary key, not LIKE 'stalled/%' (a scan of every
                # created-by/ value too: one per workflow)
                "SELECT key, value FROM settings_kv WHERE key >= 'stalled/' AND key < 'stalled0'"
            ).fetchall()
        stalled = {str(r["key"]).removeprefix("stalled/"): str(r["value"]) for r in rows}
        owned = self.inventory(owner=owner) if set(stalled) - set(problems) else {}
        for key, message in sorted(problems.items()):
            if stalled.get(key) != message:
                self.set_value(f"stalled/{key}", message)
                self.add_event(key, None, "Stalled", message)
        for healed in sorted(set(stalled) - set(problems)):
            self._delete_value(f"stalled/{healed}")
            if healed in owned:  # (a deleted workflow needs no word)
                self.add_event(healed, None, "Recovered", "applied as git says again")

    def _delete_value(self, key: str) -> None:
        with self._lock, self._sqlite_errors(f"delete {key}"), self._transaction() as txn:
            txn.write("DELETE FROM settings_kv WHERE key = ?", (key,))

    def record_sync(self, record: SyncRecord) -> None:
        """Store a sync record, dropping all but the newest SYNC_RETENTION in the same go."""
        values = (
            to_text(record.started_at),
            to_text(record.finished_at),
            record.revision,
            record.result,
            dump_json(record.summary, what="sync summary"),
            dump_json(record.plan, what="sync plan"),
            dump_json(record.errors, what="sync errors"),
            record.message,
            dump_json(record.source, what="sync source"),
        )
        with self._lock, self._sqlite_errors("record a sync"), self._transaction() as txn:
            txn.write(
                "INSERT INTO syncs (started_at, finished_at, revision, result, summary_json, "
                "plan_json, errors_json, message, source_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            txn.write(
                "DELETE FROM syncs WHERE id <= "
                "(SELECT id FROM syncs ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (SYNC_RETENTION,),
            )

    def last_sync(self) -> SyncRecord | None:
        """The sync recorded last, or None before the first."""
        syncs = self.recent_syncs(limit=1)
        return syncs[0] if syncs else None

    # -- beyond the protocol ----------------------------------------------

    def recent_syncs(self, limit: int = 20) -> list[SyncRecord]:
        """Up to limit sync records, newest first."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        with self._lock, self._sqlite_errors("read sync records"):
            rows = self._conn.execute(
                f"SELECT {_SYNC_COLUMNS} FROM syncs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [self._sync_from_row(row) for row in rows]

    def set_suspended(self, key: WorkflowKey, suspended: bool) -> AppliedWorkflow:
        """Suspend or resume a workflow (bumps updated_at); no write when already so."""
        with self._lock, self._sqlite_errors(f"suspend or resume workflow {key}"):
            row = self._live_row(key)
            if row.suspended == suspended:
                return self._require_workflow(key)
            with self._transaction() as txn:
                row = self._live_row(key)
                if row.suspended != suspended:
                    txn.write(
                        "UPDATE workflows SET suspended = ?, updated_at = ? WHERE key = ?",
                        (int(suspended), to_text(self._now()), key),
                    )
                return self._require_workflow(key)

    def set_state(self, key: WorkflowKey, state: WorkflowState) -> AppliedWorkflow:
        """Record a lifecycle state (``running``, ``failed``...); no write when unchanged.

        updated_at is left alone: it tells when the applied spec last changed,
        not when a run last started. ``deleted`` is refused: use delete_workflow,
        which checks the owner and records deleted_at.
        """
        if state not in WORKFLOW_STATES:
            raise ValueError(f"unknown workflow state {state!r}; one of {WORKFLOW_STATES}")
        if state == "deleted":
            raise ValueError("set_state cannot delete; use delete_workflow(key, owner=...)")
        with self._lock, self._sqlite_errors(f"set the state of workflow {key}"):
            row = self._live_row(key)
            if row.state == state:
                return self._require_workflow(key)
            with self._transaction() as txn:
                row = self._live_row(key)
                if row.state != state:
                    txn.write(
                        "UPDATE workflows SET state = ?, state_changed_at = ? WHERE key = ?",
                        (state, to_text(self._now()), key),
                    )
                return self._require_workflow(key)

    def schema_version(self) -> int:
        """The highest migration applied to the database."""
        with self._lock, self._sqlite_errors("read the schema version"):
            versions = self._applied_versions()
            return max(versions, default=0)

    # -- opening ----------------------------------------------------------

    def _open_with_retries(self, attempts: int = 40) -> tuple[int, ...]:
        """Configure and migrate. Stores opened at the same moment race for the WAL switch
        and the first migrations, where SQLite answers "locked" without waiting: retry."""
        for attempt in range(attempts):
            try:
                with self._lock, self._sqlite_errors("open the state database"):
                    self._configure()
                    return self._migrate()
            except TransientError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.05 * (1 + attempt % 4))
        raise AssertionError("unreachable")

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise TerminalError(
                f"state database {self.path} cannot use write-ahead logging (journal mode "
                f"stays {mode!r}); put the state directory on a local filesystem"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        # checkpoints run on the Checkpointer's thread; this is only its safety net
        conn.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_NET_PAGES}")
        conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> tuple[int, ...]:
        """Apply the missing migrations in order, each in its own transaction."""
        self._check_versions(self._applied_versions())
        applied: list[int] = []
        for version, script in MIGRATIONS:
            if version in self._applied_versions():
                continue
            with self._transaction(counted=False) as txn:
                txn.conn.execute(_CREATE_MIGRATIONS_TABLE)
                present = self._applied_versions()  # another store may have migrated meanwhile
                self._check_versions(present)
                if version in present:
                    continue
                for statement in _statements(script):
                    txn.write(statement)
                txn.write(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, to_text(self._now())),
                )
                applied.append(version)
        return tuple(applied)

    def _applied_versions(self) -> set[int]:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if exists is None:
            return set()
        return {int(row[0]) for row in self._conn.execute("SELECT version FROM schema_migrations")}

    def _check_versions(self, present: set[int]) -> None:
        known = latest_schema_version()
        newest = max(present, default=0)
        if newest > known:
            raise TerminalError(
                f"state dir was written by a newer reconciler: schema {newest} > {known} "
                f"({self.path}); run that version or newer, or use another state dir"
            )
        missing = sorted(
            version for version, _ in MIGRATIONS if version < newest and version not in present
        )
        unknown = sorted(present - {version for version, _ in MIGRATIONS})
        if missing or unknown:
            raise TerminalError(
                f"state database {self.path} has an inconsistent schema: migrations "
                f"{missing} are missing below {newest}, unknown versions {unknown}; "
                "restore it from a backup or use a new state dir"
            )

    # -- transactions and errors ------------------------------------------

    @contextmanager
    def _transaction(self, *, counted: bool = True) -> Iterator[Transaction]:
        """BEGIN IMMEDIATE; commit if the body wrote, else roll back. Caller holds the lock."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        txn = Transaction(conn)
        try:
            yield txn
            conn.execute("COMMIT" if txn.wrote else "ROLLBACK")
        except BaseException as exc:
            self._inventories.clear()  # it may hold writes that were not committed
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    exc.add_note(f"rolling back also failed: {rollback_error}")
            raise
        if txn.wrote:
            self._checkpointer.poke()
        if txn.wrote and counted:
            self.writes += 1

    @contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        """Turn sqlite errors into TransientError or TerminalError naming the database."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate_error(exc, path=self.path, doing=doing) from exc

    # -- rows -------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock.now()

    def _select_row(self, key: str) -> _Row | None:
        row = self._conn.execute(
            "SELECT key, owner, state, spec_hash, path, suspended FROM workflows WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return _Row(
            key=row["key"],
            owner=row["owner"],
            state=row["state"],
            spec_hash=row["spec_hash"],
            path=row["path"],
            suspended=bool(row["suspended"]),
        )

    def _live_row(self, key: WorkflowKey) -> _Row:
        """The row under key, which must exist and not be deleted."""
        row = self._select_row(key)
        if row is None:
            raise TerminalError(f"workflow {key} does not exist in {self.path}")
        if row.state == "deleted":
            raise TerminalError(f"workflow {key} is deleted; apply it again first")
        return row

    def _select_workflow(self, key: str) -> AppliedWorkflow | None:
        row = self._conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else self._workflow_from_row(row)

    def _require_workflow(self, key: str) -> AppliedWorkflow:
        workflow = self._select_workflow(key)
        if workflow is None:
            raise TerminalError(f"workflow {key} vanished from {self.path} while being applied")
        return workflow

    def _decide_apply(self, request: WorkflowApply) -> _Apply:
        """What applying request means; raises TerminalError for another owner's workflow."""
        desired = request.desired
        row = self._select_row(desired.key)
        if row is None:
            return _Apply.CREATE
        if row.state == "deleted":
            return _Apply.RECREATE
        if row.owner != request.owner:
            raise TerminalError(
                f"workflow {desired.key} ({desired.path}) belongs to owner {row.owner!r}, "
                f"not {request.owner!r}; a reconciler never takes over another owner's "
                "workflow: delete it under its owner first, or rename it"
            )
        if row.spec_hash == desired.spec_hash and row.path == desired.path:
            return _Apply.SAME
        return _Apply.UPDATE

    def _write_apply(self, txn: Transaction, request: WorkflowApply, *, now: datetime) -> None:
        desired = request.desired
        decision = self._decide_apply(request)  # again: the world may have moved since
        spec_json = desired.spec_json  # canonical JSON already (dump_json's own encoding)
        stamp = to_text(now)
        self._patch_inventory(
            request.owner,
            desired.key,
            InventoryEntry(
                desired.key,
                path=desired.path,
                spec_hash=desired.spec_hash,
                load_spec=functools.partial(self._spec_of, desired.key),
            ),
        )
        if decision is _Apply.CREATE:
            txn.write(
                f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', 0, ?, ?, NULL)",
                (
                    desired.key,
                    desired.workspace,
                    desired.name,
                    spec_json,
                    desired.spec_hash,
                    request.source,
                    desired.path,
                    request.revision,
                    request.owner,
                    stamp,
                    stamp,
                ),
            )
        elif decision is _Apply.RECREATE:
            # The same row, revived: rows that later tables point at stay valid.
            txn.write(
                "UPDATE workflows SET workspace = ?, name = ?, spec_json = ?, spec_hash = ?, "
                "source = ?, path = ?, revision = ?, owner = ?, state = 'active', suspended = 0, "
                "created_at = ?, updated_at = ?, deleted_at = NULL WHERE key = ?",
                (
                    desired.workspace,
                    desired.name,
                    spec_json,
                    desired.spec_hash,
                    request.source,
                    desired.path,
                    request.revision,
                    request.owner,
                    stamp,
                    stamp,
                    desired.key,
                ),
            )
        elif decision is _Apply.UPDATE:
            txn.write(
                "UPDATE workflows SET spec_json = ?, spec_hash = ?, source = ?, path = ?, "
                "revision = ?, updated_at = ? WHERE key = ?",
                (
                    spec_json,
                    desired.spec_hash,
                    request.source,
                    desired.path,
                    request.revision,
                    stamp,
                    desired.key,
                ),
            )

    def _needs_delete(self, key: WorkflowKey, *, owner: str) -> bool:
        row = self._select_row(key)
        if row is None or row.state == "deleted":
            return False
        if row.owner != owner:
            raise TerminalError(
                f"workflow {key} belongs to owner {row.owner!r}, not {owner!r}; "
                "a reconciler deletes only the workflows it applied"
            )
        return True

    def _workflow_from_row(self, row: sqlite3.Row) -> AppliedWorkflow:
        key = row["key"]
        state = row["state"]
        if state not in WORKFLOW_STATES:
            raise TerminalError(
                f"workflow {key} in {self.path} has an unknown state {state!r}; "
                "was the database written by a newer reconciler?"
            )
        return AppliedWorkflow(
            key=WorkflowKey(key),
            workspace=row["workspace"],
            name=row["name"],
            spec=load_json(row["spec_json"], what=f"spec of workflow {key} in {self.path}"),
            spec_hash=row["spec_hash"],
            source=row["source"],
            path=row["path"],
            revision=Revision(row["revision"]),
            owner=row["owner"],
            state=cast(WorkflowState, state),
            suspended=bool(row["suspended"]),
            created_at=from_text(row["created_at"], what=f"created_at of workflow {key}"),
            updated_at=from_text(row["updated_at"], what=f"updated_at of workflow {key}"),
        )

    def _sync_from_row(self, row: sqlite3.Row) -> SyncRecord:
        what = f"sync record {row['id']} in {self.path}"
        result = row["result"]
        if result not in _SYNC_RESULTS:
            raise TerminalError(f"{what} has an unknown result {result!r}")
        revision = row["revision"]
        return SyncRecord(
            started_at=from_text(row["started_at"], what=f"started_at of {what}"),
            finished_at=from_text(row["finished_at"], what=f"finished_at of {what}"),
            revision=None if revision is None else Revision(revision),
            result=cast(SyncResult, result),
            summary=load_json(row["summary_json"], what=f"summary of {what}"),
            plan=load_json(row["plan_json"], what=f"plan of {what}"),
            errors=load_json(row["errors_json"], what=f"errors of {what}"),
            message=row["message"],
            source=load_json(row["source_json"], what=f"source of {what}"),
        )


def _make_state_dir(state_dir: Path) -> None:
    """Create the state directory private to its user (0700); leave an existing one be."""
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not state_dir.is_dir():
            raise TerminalError(f"state dir {state_dir} exists and is not a directory") from None
        return
    except OSError as exc:
        raise TerminalError(f"cannot create state dir {state_dir}: {exc}") from exc
    try:
        state_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise TerminalError(f"cannot make state dir {state_dir} private: {exc}") from exc


def _translate_error(
    exc: sqlite3.Error, *, path: Path, doing: str
) -> TransientError | TerminalError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary not in _TRANSIENT_HINTS:
        text = str(exc).lower()
        primary = next(
            (value for message, value in _TRANSIENT_MESSAGES.items() if message in text), None
        )
    if primary is not None and primary in _TRANSIENT_HINTS:
        return TransientError(
            f"state database {path}: could not {doing}: {exc} ({_TRANSIENT_HINTS[primary]})"
        )
    return TerminalError(f"state database {path}: could not {doing}: {exc}")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (semicolons inside literals stay put)."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {current.strip()!r}")
    return statements
