"""Runs, their steps, the schedule ledger and the event log in the local SQLite state.

Exactly-once scheduling rests on two things here: a run's primary key is
(workspace, run id), and a scheduled run's id comes from its slot, so
inserting a run that exists is a no-op (``INSERT OR IGNORE``); and the runs
of a scheduling decision are inserted in the same transaction that moves the
ledger forward. A crash before the commit loses neither; a crash after it
repeats neither.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from reconciler.adapters.local.codecs import Transaction, dump_json, from_text, load_json, to_text
from reconciler.core.names import Revision, RunId, WorkflowKey
from reconciler.core.runs import RUN_STATES, STEP_STATES, Run, RunState, StepRun, StepState
from reconciler.core.schedules import ScheduledWorkflow, scheduled_workflow
from reconciler.core.slots import Ledger
from reconciler.ports import Event, TerminalError

_RUN_COLUMNS = (
    "workspace, run_id, key, name, trigger, requested_by, revision, spec_json, spec_hash, slot, "
    "state, reason, cancel_requested, created_at, started_at, finished_at"
)
_STEP_COLUMNS = (
    "workspace, run_id, position, name, depends_json, state, started_at, finished_at, "
    "exit_code, reason, pid"
)


class StoredSpec(Mapping[str, Any]):
    """A workflow's spec as the store holds it (its JSON text), decoded on first use.

    The scheduler copies a workflow's spec into each run it creates, thousands
    in a busy minute: handed the text back, ``create_runs`` stores it as it is
    (the slow path it replaces: ``load_json`` of every spec when it is read,
    then ``dump_json`` of it again for every run).
    """

    __slots__ = ("_decoded", "_what", "text")

    def __init__(self, text: str, *, what: str) -> None:
        self.text = text
        self._what = what
        self._decoded: Mapping[str, Any] | None = None

    def _spec(self) -> Mapping[str, Any]:
        if self._decoded is None:
            decoded = load_json(self.text, what=self._what)
            if not isinstance(decoded, dict):
                raise TerminalError(f"{self._what} is not a JSON object")
            self._decoded = decoded
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._spec()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec())

    def __len__(self) -> int:
        return len(self._spec())

    def __repr__(self) -> str:
        return f"StoredSpec({self.text!r})"


class RunsMixin:
    """Run storage for ``LocalStore``; relies on its connection, lock and transactions."""

    _conn: sqlite3.Connection
    _lock: threading.Lock
    path: Path
    writes: int

    if TYPE_CHECKING:  # provided by LocalStore

        def _transaction(self, *, counted: bool = True) -> AbstractContextManager[Transaction]: ...
        def _sqlite_errors(self, doing: str) -> AbstractContextManager[None]: ...
        def _now(self) -> datetime: ...

    # -- creating -----------------------------------------------------------

    def create_runs(
        self,
        runs: Sequence[Run],
        *,
        ledgers: Sequence[tuple[WorkflowKey, Ledger]] = (),
        events: Sequence[tuple[str, str | None, str, str]] = (),
    ) -> list[bool]:
        """Insert runs that do not exist yet (and move ledgers) in one transaction.

        Returns, per run, whether it was created (False: it existed). Events
        are (key, run id, kind, message).
        """
        with self._lock, self._sqlite_errors("create runs"), self._transaction() as txn:
            # Batched (a busy minute creates thousands): find the runs that exist, then
            # insert the others and their steps with executemany.
            existing = self._existing_runs(txn, runs)
            created: list[bool] = []
            fresh: list[Run] = []
            specs: dict[int, str] = {}  # runs of one workflow share its spec object
            for run in runs:
                ident = (run.workspace, run.run_id)
                is_new = ident not in existing
                created.append(is_new)
                if is_new:
                    existing.add(ident)
                    fresh.append(run)
            if fresh:
                txn.conn.executemany(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [self._run_values(run, specs=specs) for run in fresh],
                )
                txn.conn.executemany(
                    f"INSERT INTO run_steps ({_STEP_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        self._step_values(run, step, position)
                        for run in fresh
                        for position, step in enumerate(run.steps)
                    ],
                )
                txn.wrote = True
            if ledgers:
                now = to_text(self._now())
                txn.conn.executemany(
                    "INSERT INTO schedule_ledger (key, last_slot, schedule_hash, updated_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "last_slot = excluded.last_slot, schedule_hash = excluded.schedule_hash, "
                    "updated_at = excluded.updated_at",
                    [(key, _maybe_text(v.last_slot), v.schedule_hash, now) for key, v in ledgers],
                )
                txn.wrote = True
            for event in events:
                self._insert_event(txn, *event)
            return created

    @staticmethod
    def _existing_runs(txn: Transaction, runs: Sequence[Run]) -> set[tuple[str, str]]:
        # One workspace and a list of run ids per query: SQLite searches the primary key
        # for each. (A row-value "(workspace, run_id) IN (VALUES ...)" scanned the whole
        # table once per chunk, slower with every run stored.)
        by_workspace: dict[str, list[str]] = {}
        for run in runs:
            by_workspace.setdefault(run.workspace, []).append(run.run_id)
        existing: set[tuple[str, str]] = set()
        for workspace, run_ids in by_workspace.items():
            rows = _select_in(
                txn.conn,
                "SELECT run_id FROM runs WHERE workspace = ? AND run_id IN",
                run_ids,
                before=[workspace],
            )
            existing.update((workspace, row[0]) for row in rows)
        return existing

    def scheduled_workflows(self) -> list[ScheduledWorkflow]:
        """Every workflow with a schedule, neither suspended nor deleted, by key.

        Row by row, each spec decoded and dropped before the next (the slow path
        it replaces, ``all_workflows``, holds every decoded spec at once: over
        100 MB for 10,000, which the process then keeps).
        """
        shared: dict[Any, Any] = {}
        found: list[ScheduledWorkflow] = []
        with self._lock, self._sqlite_errors("read scheduled workflows"):
            rows = self._conn.execute(
                "SELECT key, workspace, name, revision, spec_hash, created_at, spec_json "
                "FROM workflows WHERE state != 'deleted' AND suspended = 0 ORDER BY key"
            )
            for key, workspace, name, revision, spec_hash, created_at, spec_json in rows:
                what = f"workflow {key} in {self.path}"
                scheduled = scheduled_workflow(
                    key=WorkflowKey(key),
                    workspace=workspace,
                    name=name,
                    revision=Revision(revision),
                    spec_hash=spec_hash,
                    created_at=from_text(created_at, what=f"created_at of {what}"),
                    spec=load_json(spec_json, what=f"spec of {what}"),
                    shared=shared,
                )
                if scheduled is not None:
                    found.append(scheduled)
        return found

    def workflow_specs(
        self, keys: Sequence[WorkflowKey]
    ) -> dict[WorkflowKey, tuple[str, Mapping[str, Any]]]:
        """The spec hash and spec of each of these workflows that is not deleted.

        The specs are ``StoredSpec``: their text, decoded only when read.
        """
        found: dict[WorkflowKey, tuple[str, Mapping[str, Any]]] = {}
        with self._lock, self._sqlite_errors("read workflow specs"):
            rows = _select_in(
                self._conn,
                "SELECT key, spec_hash, spec_json FROM workflows WHERE state != 'deleted' "
                "AND key IN",
                [str(k) for k in keys],
            )
            for key, spec_hash, spec_json in rows:
                spec = StoredSpec(spec_json, what=f"spec of workflow {key}")
                found[WorkflowKey(key)] = (spec_hash, spec)
        return found

    def get_ledgers(self, keys: Sequence[WorkflowKey]) -> dict[WorkflowKey, Ledger]:
        """The ledgers of many workflows in one go (absent keys have none)."""
        found: dict[WorkflowKey, Ledger] = {}
        parsed: dict[tuple[str, str], Ledger] = {}
        with self._lock, self._sqlite_errors("read schedule ledgers"):
            rows = _select_in(
                self._conn,
                "SELECT key, last_slot, schedule_hash FROM schedule_ledger WHERE key IN",
                [str(k) for k in keys],
            )
            for key, last_slot, digest in rows:
                # Workflows on one schedule share their ledger: parse each once.
                ledger = parsed.get((last_slot, digest))
                if ledger is None:
                    ledger = Ledger(from_text(last_slot, what=f"ledger of {key}"), digest)
                    parsed[last_slot, digest] = ledger
                found[WorkflowKey(key)] = ledger
        return found

    # -- updating -----------------------------------------------------------

    def save_run(
        self,
        run: Run,
        *,
        steps: Sequence[str] | None = None,
        event: tuple[str, str] | None = None,
        pids: Mapping[str, int] | None = None,
    ) -> None:
        """Store a run's state and its steps' (all, or just ``steps``) in one transaction.

        event: (kind, message); pids: step processes to remember with their steps
        (so a restarted daemon can stop an orphan). The run's own row is written
        only when it changed: it carries the spec, and rewriting that on every
        step would cost more than the step.
        """
        header = (
            run.state,
            run.reason,
            int(run.cancel_requested),
            _maybe_text(run.started_at),
            _maybe_text(run.finished_at),
        )
        where = (run.workspace, run.run_id)
        chosen: Sequence[StepRun] = run.steps if steps is None else _steps_named(run, steps)
        pid_of = pids or {}
        rows = [
            (
                step.state,
                _maybe_text(step.started_at),
                _maybe_text(step.finished_at),
                step.exit_code,
                step.reason,
                pid_of.get(step.name),
                *where,
                step.name,
            )
            for step in chosen
        ]
        with self._lock, self._sqlite_errors(f"save run {run.run_id}"), self._transaction() as txn:
            # cancel_requested only ever goes up: a cancel asked for elsewhere is never lost.
            cursor = txn.conn.execute(
                "UPDATE runs SET state = ?1, reason = ?2, "
                "cancel_requested = MAX(cancel_requested, ?3), started_at = ?4, "
                "finished_at = ?5 WHERE workspace = ?6 AND run_id = ?7 AND ("
                "state IS NOT ?1 OR reason IS NOT ?2 OR cancel_requested < ?3 "
                "OR started_at IS NOT ?4 OR finished_at IS NOT ?5)",
                (*header, *where),
            )
            header_written = cursor.rowcount > 0
            txn.wrote = True
            # A step keeps its pid unless a new one is given.
            cursor = txn.conn.executemany(
                "UPDATE run_steps SET state = ?, started_at = ?, finished_at = ?, "
                "exit_code = ?, reason = ?, pid = COALESCE(?, pid) "
                "WHERE workspace = ? AND run_id = ? AND name = ?",
                rows,
            )
            # A step row proves the run exists; only when neither was written, look.
            if not header_written and cursor.rowcount <= 0 and not self._run_exists(*where):
                raise TerminalError(f"run {run.workspace}/{run.run_id} does not exist")
            if pid_of and pid_of.keys() - {step.name for step in chosen}:
                txn.conn.executemany(
                    "UPDATE run_steps SET pid = ? WHERE workspace = ? AND run_id = ? AND name = ?",
                    [(pid, *where, name) for name, pid in pid_of.items()],
                )
            if event is not None:
                self._insert_event(txn, run.key, run.run_id, *event)

    def _run_exists(self, workspace: str, run_id: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM runs WHERE workspace = ? AND run_id = ?", (workspace, run_id)
        ).fetchone()
        return row is not None

    def request_cancel(self, workspace: str, run_id: str, *, reason: str) -> bool:
        """Flag an active run for cancelling (the executor acts on it); False if not active."""
        with self._lock, self._sqlite_errors(f"cancel run {run_id}"), self._transaction() as txn:
            cursor = txn.conn.execute(
                "UPDATE runs SET cancel_requested = 1, reason = ? WHERE workspace = ? "
                "AND run_id = ? AND state IN ('pending', 'running')",
                (reason, workspace, run_id),
            )
            txn.wrote = cursor.rowcount > 0
            return cursor.rowcount > 0

    def set_step_pid(self, run: Run, step: str, pid: int | None) -> None:
        """Remember a step's process (so a restarted daemon can stop an orphan)."""
        with self._lock, self._sqlite_errors("record a step pid"), self._transaction() as txn:
            txn.write(
                "UPDATE run_steps SET pid = ? WHERE workspace = ? AND run_id = ? AND name = ?",
                (pid, run.workspace, run.run_id, step),
            )

    def step_pids(self, run: Run) -> dict[str, int]:
        with self._lock, self._sqlite_errors("read step pids"):
            rows = self._conn.execute(
                "SELECT name, pid FROM run_steps WHERE workspace = ? AND run_id = ? "
                "AND pid IS NOT NULL",
                (run.workspace, run.run_id),
            ).fetchall()
            return {row["name"]: int(row["pid"]) for row in rows}

    # -- reading ------------------------------------------------------------

    def get_run(self, workspace: str, run_id: str) -> Run | None:
        with self._lock, self._sqlite_errors(f"read run {run_id}"):
            row = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace = ? AND run_id = ?",
                (workspace, run_id),
            ).fetchone()
            return None if row is None else self._run_from_row(row)

    def runs_of(
        self, key: WorkflowKey, *, limit: int = 20, states: Sequence[RunState] | None = None
    ) -> list[Run]:
        """Runs of one workflow, newest first."""
        where, params = "key = ?", [str(key)]
        if states is not None:
            where += f" AND state IN ({', '.join('?' for _ in states)})"
            params += list(states)
        with self._lock, self._sqlite_errors(f"read runs of {key}"):
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE {where} "
                "ORDER BY created_at DESC, run_id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [self._run_from_row(row) for row in rows]

    def active_runs(self) -> list[Run]:
        """Every pending or running run, oldest first."""
        with self._lock, self._sqlite_errors("read active runs"):
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ('pending', 'running') "
                "ORDER BY created_at, run_id"
            ).fetchall()
            return [self._run_from_row(row) for row in rows]

    def active_run_flags(self) -> dict[tuple[str, str], bool]:
        """Every pending or running run, oldest first: (workspace, run id) -> cancel requested.

        Cheap next to ``active_runs``: neither specs nor steps are read.
        """
        with self._lock, self._sqlite_errors("read active runs"):
            rows = self._conn.execute(
                "SELECT workspace, run_id, cancel_requested FROM runs "
                "WHERE state IN ('pending', 'running') ORDER BY created_at, run_id"
            ).fetchall()
            return {(row[0], row[1]): bool(row[2]) for row in rows}

    def last_finished_run(self, key: WorkflowKey) -> Run | None:
        """The newest run that ran to an end (succeeded, failed or cancelled)."""
        with self._lock, self._sqlite_errors(f"read runs of {key}"):
            row = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE key = ? "
                "AND state IN ('succeeded', 'failed', 'cancelled') "
                "ORDER BY finished_at DESC LIMIT 1",
                (key,),
            ).fetchone()
            return None if row is None else self._run_from_row(row)

    def get_ledger(self, key: WorkflowKey) -> Ledger | None:
        with self._lock, self._sqlite_errors(f"read the schedule ledger of {key}"):
            row = self._conn.execute(
                "SELECT last_slot, schedule_hash FROM schedule_ledger WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            what = f"ledger of {key}"
            return Ledger(from_text(row["last_slot"], what=what), row["schedule_hash"])

    def set_ledger(self, key: WorkflowKey, ledger: Ledger) -> None:
        self.create_runs([], ledgers=[(key, ledger)])

    def runs_finished_after(self, mark: tuple[datetime, str] | None, *, limit: int) -> list[Run]:
        """Runs that ended after ``mark`` (finished_at, "workspace/run id"), oldest first."""
        after = ("", "") if mark is None else (to_text(mark[0]), mark[1])
        with self._lock, self._sqlite_errors("read finished runs"):
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE finished_at IS NOT NULL AND "
                "(finished_at, workspace || '/' || run_id) > (?, ?) "
                "ORDER BY finished_at, workspace || '/' || run_id LIMIT ?",
                (*after, limit),
            ).fetchall()
            return [self._run_from_row(row) for row in rows]

    def get_value(self, key: str) -> str | None:
        """A small durable value (watermarks of what was reported)."""
        with self._lock, self._sqlite_errors(f"read {key}"):
            row = self._conn.execute(
                "SELECT value FROM settings_kv WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else str(row["value"])

    def set_value(self, key: str, value: str) -> None:
        with self._lock, self._sqlite_errors(f"write {key}"), self._transaction() as txn:
            txn.write(
                "INSERT INTO settings_kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- events -------------------------------------------------------------

    def add_event(self, key: str, run_id: str | None, kind: str, message: str) -> None:
        with self._lock, self._sqlite_errors("record an event"), self._transaction() as txn:
            self._insert_event(txn, key, run_id, kind, message)

    def events(self, *, key: str | None = None, limit: int = 100) -> list[Event]:
        """Newest first."""
        where, params = ("WHERE key = ? ", [key]) if key is not None else ("", [])
        with self._lock, self._sqlite_errors("read events"):
            rows = self._conn.execute(
                f"SELECT at, key, run_id, kind, message FROM events {where}"
                "ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [
                Event(
                    from_text(r["at"], what="event time"),
                    r["key"],
                    r["run_id"],
                    r["kind"],
                    r["message"],
                )
                for r in rows
            ]

    def _insert_event(
        self, txn: Transaction, key: str, run_id: str | None, kind: str, message: str
    ) -> None:
        txn.write(
            "INSERT INTO events (at, key, run_id, kind, message) VALUES (?, ?, ?, ?, ?)",
            (to_text(self._now()), key, run_id, kind, message),
        )

    # -- rows -----------------------------------------------------------------

    @staticmethod
    def _run_values(run: Run, *, specs: dict[int, str] | None = None) -> tuple[Any, ...]:
        if isinstance(run.spec, StoredSpec):  # read from this store: its text as it is
            spec_json: str | None = run.spec.text
        else:
            spec_json = None if specs is None else specs.get(id(run.spec))
        if spec_json is None:
            spec_json = dump_json(run.spec, what=f"spec of run {run.run_id}")
            if specs is not None:
                specs[id(run.spec)] = spec_json
        return (
            run.workspace,
            run.run_id,
            run.key,
            run.name,
            run.trigger,
            run.requested_by,
            run.revision,
            spec_json,
            run.spec_hash,
            _maybe_text(run.slot),
            run.state,
            run.reason,
            int(run.cancel_requested),
            _maybe_text(run.created_at),  # cached: the runs of one round share it
            _maybe_text(run.started_at),
            _maybe_text(run.finished_at),
        )

    @staticmethod
    def _step_values(run: Run, step: StepRun, position: int) -> tuple[Any, ...]:
        return (
            run.workspace,
            run.run_id,
            position,
            step.name,
            _depends_json(step.depends),
            step.state,
            _maybe_text(step.started_at),
            _maybe_text(step.finished_at),
            step.exit_code,
            step.reason,
            None,
        )

    def _run_from_row(self, row: sqlite3.Row) -> Run:
        what = f"run {row['workspace']}/{row['run_id']}"
        if row["state"] not in RUN_STATES:
            raise TerminalError(f"{what} has an unknown state {row['state']!r}")
        steps = self._conn.execute(
            f"SELECT {_STEP_COLUMNS} FROM run_steps WHERE workspace = ? AND run_id = ? "
            "ORDER BY position",
            (row["workspace"], row["run_id"]),
        ).fetchall()
        return Run(
            workspace=row["workspace"],
            run_id=RunId(row["run_id"]),
            name=row["name"],
            trigger=row["trigger"],
            requested_by=row["requested_by"],
            revision=Revision(row["revision"]),
            spec=load_json(row["spec_json"], what=f"spec of {what}"),
            spec_hash=row["spec_hash"],
            created_at=from_text(row["created_at"], what=f"created_at of {what}"),
            slot=_maybe_time(row["slot"], what=f"slot of {what}"),
            state=cast(RunState, row["state"]),
            reason=row["reason"],
            started_at=_maybe_time(row["started_at"], what=f"started_at of {what}"),
            finished_at=_maybe_time(row["finished_at"], what=f"finished_at of {what}"),
            cancel_requested=bool(row["cancel_requested"]),
            steps=tuple(_step_from_row(s, what=what) for s in steps),
        )


def _step_from_row(row: sqlite3.Row, *, what: str) -> StepRun:
    if row["state"] not in STEP_STATES:
        raise TerminalError(f"step {row['name']} of {what} has an unknown state")
    return StepRun(
        name=row["name"],
        depends=tuple(load_json(row["depends_json"], what=f"depends of {what}")),
        state=cast(StepState, row["state"]),
        started_at=_maybe_time(row["started_at"], what=what),
        finished_at=_maybe_time(row["finished_at"], what=what),
        exit_code=row["exit_code"],
        reason=row["reason"],
    )


def _steps_named(run: Run, names: Sequence[str]) -> list[StepRun]:
    """The run's steps of these names (names it does not have are left out)."""
    found = []
    for name in names:
        try:
            found.append(run.step(name))
        except KeyError:
            continue
    return found


@functools.lru_cache(maxsize=1024)  # DAGs repeat their shapes (no dump_json per step)
def _depends_json(depends: tuple[str, ...]) -> str:
    return dump_json(list(depends), what="step depends")


@functools.lru_cache(maxsize=256)  # a run's start time is written with each of its steps
def _maybe_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is UTC and moment.year >= 1000:
        # The text to_text writes, from isoformat: its strftime (the slow path this
        # replaces) costs three times as much, and each step writes two new times.
        return moment.isoformat(timespec="microseconds")
    return to_text(moment)


def _maybe_time(text: object, *, what: str) -> datetime | None:
    return None if text is None else from_text(text, what=what)


_IN_CHUNK = 500  # values per "IN (...)": well under SQLite's limit on bound parameters


def _select_in(
    conn: sqlite3.Connection, query: str, values: Sequence[str], *, before: Sequence[object] = ()
) -> list[Any]:
    """The rows of ``query`` (ending in ``IN``) for every value, ``_IN_CHUNK`` values a query;
    ``before`` binds the parameters that come ahead of the list."""
    rows: list[Any] = []
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows += conn.execute(f"{query} ({marks})", [*before, *chunk]).fetchall()
    return rows
