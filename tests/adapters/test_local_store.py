"""The local backend's SQLite store, on real database files."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from reconciler.adapters.local import store as store_module
from reconciler.adapters.local.checkpoints import SAFETY_NET_PAGES
from reconciler.adapters.local.store import (
    MIGRATIONS,
    SYNC_RETENTION,
    LocalStore,
    latest_schema_version,
)
from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.syncs import SyncRecord
from reconciler.core.workflows import (
    DesiredWorkflow,
    WorkflowApply,
    WorkflowState,
    spec_hash,
)
from reconciler.ports import TerminalError, TransientError

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
OWNER = "reconciler-a"


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.current = start
        self.ticks = 0.0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)
        self.ticks += seconds


def make_request(
    name: str = "wf",
    *,
    spec: dict[str, Any] | None = None,
    path: str | None = None,
    owner: str = OWNER,
    revision: str = "rev1",
    source: str = "https://git.example/repo.git",
) -> WorkflowApply:
    spec = {"name": name, "schedule": "*/5 * * * *"} if spec is None else spec
    desired = DesiredWorkflow.from_spec(
        key=WorkflowKey(f"public/{name}"),
        workspace="public",
        name=name,
        path=path or f"workflows/{name}.yaml",
        spec=spec,
        spec_hash=spec_hash(spec),
    )
    return WorkflowApply(desired=desired, source=source, revision=Revision(revision), owner=owner)


def key(name: str) -> WorkflowKey:
    return WorkflowKey(f"public/{name}")


def raw(store: LocalStore) -> sqlite3.Connection:
    return sqlite3.connect(store.path)


def make_sync(number: int, *, started: datetime = START) -> SyncRecord:
    return SyncRecord(
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        revision=Revision(f"rev{number}"),
        result="succeeded",
        summary={"created": number},
        message=f"sync {number}",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path, clock: FakeClock) -> Iterator[LocalStore]:
    with LocalStore(state_dir, clock=clock) as opened:
        yield opened


# -- opening ----------------------------------------------------------------


def test_open_creates_private_state_dir_and_wal_database(state_dir: Path, clock: FakeClock) -> None:
    with LocalStore(state_dir, clock=clock) as store:
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert (state_dir / "state.db").is_file()
        with raw(store) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [version for version, _ in MIGRATIONS]
        assert store.schema_version() == latest_schema_version()
        assert store.migrations_applied == tuple(versions)
        assert store.writes == 0


def test_migrations_are_numbered_one_up_in_order() -> None:
    assert [version for version, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_reopening_runs_no_migration(state_dir: Path, clock: FakeClock) -> None:
    LocalStore(state_dir, clock=clock).close()
    with sqlite3.connect(state_dir / "state.db") as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    clock.advance(60)
    with LocalStore(state_dir, clock=clock) as reopened:
        assert reopened.migrations_applied == ()
        assert reopened.writes == 0
    with sqlite3.connect(state_dir / "state.db") as conn:
        after = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert after == before


def test_database_from_a_newer_reconciler_is_refused(state_dir: Path, clock: FakeClock) -> None:
    LocalStore(state_dir, clock=clock).close()
    future = latest_schema_version() + 1
    with sqlite3.connect(state_dir / "state.db") as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')", (future,)
        )
    with pytest.raises(TerminalError) as caught:
        LocalStore(state_dir, clock=clock)
    assert (
        f"state dir was written by a newer reconciler: schema {future} > "
        f"{latest_schema_version()}" in str(caught.value)
    )


def test_later_migration_applies_to_an_existing_database(
    state_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalStore(state_dir, clock=clock) as first:
        first.apply_workflow(make_request("kept"))
    runs = (
        len(MIGRATIONS) + 1,
        "CREATE TABLE notes (id TEXT PRIMARY KEY, "
        "workflow TEXT NOT NULL REFERENCES workflows (key) ON DELETE CASCADE, note TEXT);"
        "INSERT INTO notes (id, workflow, note) VALUES ('r1', 'public/kept', 'a;b');",
    )
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, runs])
    with LocalStore(state_dir, clock=clock) as second:
        assert second.migrations_applied == (runs[0],)
        assert second.schema_version() == runs[0]
        # A delete and a re-create keep the row, so the note pointing at it survives.
        second.delete_workflow(key("kept"), owner=OWNER)
        second.apply_workflow(make_request("kept"))
    with sqlite3.connect(state_dir / "state.db") as conn:
        assert conn.execute("SELECT id, note FROM notes").fetchall() == [("r1", "a;b")]


def test_failing_migration_is_rolled_back_whole(
    state_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    LocalStore(state_dir, clock=clock).close()
    broken = (
        len(MIGRATIONS) + 1,
        "CREATE TABLE notes (id TEXT PRIMARY KEY); INSERT INTO nowhere VALUES (1);",
    )
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(TerminalError, match="no such table: nowhere"):
        LocalStore(state_dir, clock=clock)
    with sqlite3.connect(state_dir / "state.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        versions = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    assert "notes" not in tables
    assert versions == {version for version, _ in MIGRATIONS}


def test_file_that_is_not_a_database_is_terminal(state_dir: Path, clock: FakeClock) -> None:
    state_dir.mkdir()
    (state_dir / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TerminalError, match="not a database"):
        LocalStore(state_dir, clock=clock)


def test_state_dir_that_is_a_file_is_terminal(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "state").write_text("oops")
    with pytest.raises(TerminalError, match="not a directory"):
        LocalStore(tmp_path / "state", clock=clock)


# -- applying ---------------------------------------------------------------


def test_apply_creates_an_active_workflow(store: LocalStore, clock: FakeClock) -> None:
    request = make_request("daily", spec={"b": [1, 2], "a": {"ü": "ß"}})
    applied = store.apply_workflow(request)
    assert applied.key == key("daily")
    assert (applied.workspace, applied.name) == ("public", "daily")
    assert applied.spec == {"a": {"ü": "ß"}, "b": [1, 2]}
    assert applied.spec_hash == request.desired.spec_hash
    assert (applied.source, applied.path, applied.revision) == (
        request.source,
        request.desired.path,
        "rev1",
    )
    assert applied.owner == OWNER
    assert applied.state == "active"
    assert applied.suspended is False
    assert applied.created_at == applied.updated_at == clock.now()
    assert store.get_workflow(key("daily")) == applied
    assert store.writes == 1
    with raw(store) as conn:
        stored = conn.execute("SELECT spec_json FROM workflows").fetchone()[0]
    assert stored == '{"b":[1,2],"a":{"ü":"ß"}}'  # the manifest's order, compact, UTF-8 as is


def test_apply_stores_a_read_only_mapping_spec(store: LocalStore) -> None:
    spec = {"steps": MappingProxyType({"x": 1})}
    request = make_request("frozen", spec={"steps": {"x": 1}})
    frozen = WorkflowApply(
        desired=DesiredWorkflow.from_spec(
            key=request.desired.key,
            workspace=request.desired.workspace,
            name=request.desired.name,
            path=request.desired.path,
            spec=MappingProxyType(spec),
            spec_hash=request.desired.spec_hash,
        ),
        source=request.source,
        revision=request.revision,
        owner=request.owner,
    )
    assert store.apply_workflow(frozen).spec == {"steps": {"x": 1}}


def test_identical_apply_writes_nothing(store: LocalStore, clock: FakeClock) -> None:
    first = store.apply_workflow(make_request("wf"))
    writes = store.writes
    clock.advance(60)
    again = store.apply_workflow(make_request("wf", revision="rev2", source="/elsewhere"))
    assert store.writes == writes
    assert again == first  # revision and source move only with a change worth writing


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"spec": {"name": "wf", "schedule": "0 * * * *"}}, id="spec"),
        pytest.param({"path": "moved/wf.yaml"}, id="path"),
    ],
)
def test_apply_with_a_change_updates_in_place(
    store: LocalStore, clock: FakeClock, change: dict[str, Any]
) -> None:
    first = store.apply_workflow(make_request("wf"))
    store.set_suspended(key("wf"), True)
    store.set_state(key("wf"), "running")
    writes = store.writes
    clock.advance(60)
    request = make_request("wf", revision="rev2", source="/checkout", **change)
    updated = store.apply_workflow(request)
    assert store.writes == writes + 1
    assert updated.spec == request.desired.spec
    assert updated.spec_hash == request.desired.spec_hash
    assert updated.path == request.desired.path
    assert (updated.revision, updated.source) == ("rev2", "/checkout")
    assert (updated.state, updated.suspended) == ("running", True)
    assert updated.created_at == first.created_at
    assert updated.updated_at == clock.now()


def test_apply_refuses_a_workflow_of_another_owner(store: LocalStore) -> None:
    theirs = store.apply_workflow(make_request("wf", owner="reconciler-b"))
    writes = store.writes
    changed = {"name": "wf", "changed": True}
    with pytest.raises(TerminalError) as caught:
        store.apply_workflow(make_request("wf", owner=OWNER, spec=changed))
    assert "'reconciler-b'" in str(caught.value)
    assert f"'{OWNER}'" in str(caught.value)
    assert store.writes == writes
    assert store.get_workflow(key("wf")) == theirs


def test_apply_many_is_one_transaction(store: LocalStore) -> None:
    applied = store.apply_many([make_request(name) for name in ("a", "b", "c")])
    assert [workflow.name for workflow in applied] == ["a", "b", "c"]
    assert store.writes == 1
    assert store.apply_many([make_request(name) for name in ("a", "b", "c")]) == applied
    assert store.writes == 1
    assert store.apply_many([]) == []


def test_apply_many_writes_nothing_when_one_request_is_refused(store: LocalStore) -> None:
    store.apply_workflow(make_request("theirs", owner="reconciler-b"))
    writes = store.writes
    with pytest.raises(TerminalError, match="reconciler-b"):
        store.apply_many([make_request("new"), make_request("theirs")])
    assert store.get_workflow(key("new")) is None
    assert store.writes == writes


def test_apply_many_later_request_for_a_key_wins(store: LocalStore) -> None:
    store.apply_workflow(make_request("wf"))
    second = make_request("wf", spec={"v": 2})
    results = store.apply_many([make_request("wf", spec={"v": 1}), second])
    assert [result.spec for result in results] == [{"v": 2}, {"v": 2}]
    assert store.get_workflow(key("wf")) == results[1]


# -- deleting ---------------------------------------------------------------


def test_delete_keeps_a_tombstone(store: LocalStore, clock: FakeClock) -> None:
    store.apply_workflow(make_request("wf"))
    writes = store.writes
    clock.advance(60)
    store.delete_workflow(key("wf"), owner=OWNER)
    assert store.writes == writes + 1
    tombstone = store.get_workflow(key("wf"))
    assert tombstone is not None
    assert tombstone.state == "deleted"
    assert store.applied_workflows(owner=OWNER) == {}
    assert store.all_workflows() == []
    assert store.all_workflows(include_deleted=True) == [tombstone]
    with raw(store) as conn:
        deleted_at = conn.execute("SELECT deleted_at FROM workflows").fetchone()[0]
    assert datetime.fromisoformat(deleted_at) == clock.now()


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(False, id="missing"),
        pytest.param(True, id="already-deleted"),
    ],
)
def test_delete_of_nothing_writes_nothing(store: LocalStore, prepare: bool) -> None:
    if prepare:
        store.apply_workflow(make_request("wf"))
        store.delete_workflow(key("wf"), owner=OWNER)
    writes = store.writes
    store.delete_workflow(key("wf"), owner=OWNER)
    assert store.writes == writes


def test_delete_refuses_a_workflow_of_another_owner(store: LocalStore) -> None:
    store.apply_workflow(make_request("wf", owner="reconciler-b"))
    with pytest.raises(TerminalError) as caught:
        store.delete_workflow(key("wf"), owner=OWNER)
    assert "'reconciler-b'" in str(caught.value)
    assert f"'{OWNER}'" in str(caught.value)
    workflow = store.get_workflow(key("wf"))
    assert workflow is not None
    assert workflow.state == "active"


def test_recreate_after_delete_revives_the_same_row(store: LocalStore, clock: FakeClock) -> None:
    store.apply_workflow(make_request("wf", owner="reconciler-b"))
    store.set_suspended(key("wf"), True)
    with raw(store) as conn:
        rowid = conn.execute("SELECT rowid FROM workflows").fetchone()[0]
    store.delete_workflow(key("wf"), owner="reconciler-b")
    clock.advance(60)
    writes = store.writes
    revived = store.apply_workflow(make_request("wf", owner=OWNER))  # a tombstone has no owner
    assert store.writes == writes + 1
    assert (revived.state, revived.suspended, revived.owner) == ("active", False, OWNER)
    assert revived.created_at == revived.updated_at == clock.now()
    with raw(store) as conn:
        row = conn.execute("SELECT rowid, deleted_at FROM workflows").fetchone()
    assert row == (rowid, None)


def test_inventory_holds_the_owners_live_workflows(store: LocalStore) -> None:
    store.apply_many(
        [
            make_request("mine"),
            make_request("gone"),
            make_request("theirs", owner="reconciler-b"),
        ]
    )
    store.delete_workflow(key("gone"), owner=OWNER)
    assert list(store.applied_workflows(owner=OWNER)) == [key("mine")]
    assert list(store.applied_workflows(owner="reconciler-b")) == [key("theirs")]
    assert [workflow.name for workflow in store.all_workflows()] == ["mine", "theirs"]
    assert [w.name for w in store.all_workflows(include_deleted=True)] == [
        "gone",
        "mine",
        "theirs",
    ]


def test_inventory_stays_equal_to_the_rows_between_reads(store: LocalStore) -> None:
    """The inventory is kept between passes: every write must keep it true."""

    def rows() -> dict[WorkflowKey, tuple[str, str]]:
        found = raw(store).execute(
            "SELECT key, path, spec_hash FROM workflows WHERE owner = ? AND state != 'deleted'",
            (OWNER,),
        )
        return {WorkflowKey(k): (p, h) for k, p, h in found}

    def seen() -> dict[WorkflowKey, tuple[str, str]]:
        return {k: (e.path, e.spec_hash) for k, e in store.inventory(owner=OWNER).items()}

    store.apply_many([make_request("a"), make_request("b")])
    assert seen() == rows()
    assert len(seen()) == 2
    store.apply_workflow(make_request("a", spec={"v": 2}, path="moved/a.yaml"))
    assert seen() == rows()
    assert seen()[key("a")][0] == "moved/a.yaml"
    store.delete_workflow(key("b"), owner=OWNER)
    assert seen() == rows()
    assert key("b") not in seen()
    store.apply_workflow(make_request("b"))  # the same row, revived
    assert seen() == rows()
    store.apply_workflow(make_request("theirs", owner="reconciler-b"))
    with pytest.raises(TerminalError, match="reconciler-b"):
        store.apply_many([make_request("c"), make_request("theirs")])
    assert seen() == rows()
    assert key("c") not in seen()
    other = raw(store)  # another connection commits, as a CLI command would
    other.execute("UPDATE workflows SET spec_hash = 'changed' WHERE key = ?", (key("a"),))
    other.commit()
    assert seen() == rows()
    assert seen()[key("a")][1] == "changed"
    assert store.inventory(owner=OWNER)[key("a")].spec == {"v": 2}


# -- suspending and states --------------------------------------------------


def test_set_suspended_toggles_and_bumps_updated_at(store: LocalStore, clock: FakeClock) -> None:
    store.apply_workflow(make_request("wf"))
    clock.advance(60)
    suspended = store.set_suspended(key("wf"), True)
    assert suspended.suspended is True
    assert suspended.updated_at == clock.now()
    writes = store.writes
    assert store.set_suspended(key("wf"), True) == suspended
    assert store.writes == writes
    assert store.set_suspended(key("wf"), False).suspended is False
    assert store.writes == writes + 1


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("running", id="running"),
        pytest.param("succeeded", id="succeeded"),
        pytest.param("failed", id="failed"),
    ],
)
def test_set_state_records_the_state(
    store: LocalStore, clock: FakeClock, state: WorkflowState
) -> None:
    first = store.apply_workflow(make_request("wf"))
    clock.advance(60)
    changed = store.set_state(key("wf"), state)
    assert changed.state == state
    assert changed.updated_at == first.updated_at
    writes = store.writes
    assert store.set_state(key("wf"), state) == changed
    assert store.writes == writes


def test_set_state_refuses_deleted(store: LocalStore) -> None:
    store.apply_workflow(make_request("wf"))
    with pytest.raises(ValueError, match="delete_workflow"):
        store.set_state(key("wf"), "deleted")


@pytest.mark.parametrize(
    ("deleted", "match"),
    [
        pytest.param(False, "does not exist", id="missing"),
        pytest.param(True, "is deleted", id="deleted"),
    ],
)
def test_setters_refuse_missing_and_deleted(store: LocalStore, deleted: bool, match: str) -> None:
    if deleted:
        store.apply_workflow(make_request("wf"))
        store.delete_workflow(key("wf"), owner=OWNER)
    with pytest.raises(TerminalError, match=match):
        store.set_suspended(key("wf"), True)
    with pytest.raises(TerminalError, match=match):
        store.set_state(key("wf"), "running")


# -- syncs ------------------------------------------------------------------


def test_sync_record_round_trip(store: LocalStore) -> None:
    assert store.last_sync() is None
    record = SyncRecord(
        started_at=START,
        finished_at=START + timedelta(seconds=3),
        revision=None,
        result="failed",
        summary={"created": 1, "deleted": 0},
        plan=[{"action": "create", "key": "public/wf", "extra": {"z": 1, "a": [None]}}],
        errors=[{"file": "wf.yaml", "line": 3, "message": "bad cron"}],
        message="validation failed",
    )
    store.record_sync(record)
    assert store.last_sync() == record
    assert store.recent_syncs() == [record]
    assert store.writes == 1


def test_sync_records_keep_the_newest(store: LocalStore) -> None:
    for number in range(1, SYNC_RETENTION + 6):
        store.record_sync(make_sync(number, started=START + timedelta(minutes=number)))
    kept = store.recent_syncs(limit=SYNC_RETENTION + 100)
    assert len(kept) == SYNC_RETENTION
    assert kept[0].message == f"sync {SYNC_RETENTION + 5}"
    assert kept[-1].message == "sync 6"
    last = store.last_sync()
    assert last is not None
    assert last.message == f"sync {SYNC_RETENTION + 5}"
    assert [record.message for record in store.recent_syncs(limit=2)] == [
        f"sync {SYNC_RETENTION + 5}",
        f"sync {SYNC_RETENTION + 4}",
    ]


# -- time -------------------------------------------------------------------


def test_datetimes_come_back_aware_in_utc(state_dir: Path) -> None:
    local = datetime(2024, 3, 1, 14, 30, 15, 250, tzinfo=timezone(timedelta(hours=2)))
    with LocalStore(state_dir, clock=FakeClock(local)) as store:
        applied = store.apply_workflow(make_request("wf"))
        store.record_sync(make_sync(1, started=local))
        record = store.last_sync()
    assert applied.created_at.tzinfo is UTC
    assert applied.created_at == local
    assert record is not None
    assert record.started_at.tzinfo is UTC
    assert record.started_at == local


def test_naive_time_is_refused(state_dir: Path) -> None:
    with LocalStore(state_dir, clock=FakeClock()) as store:
        with pytest.raises(TerminalError, match="naive"):
            store.record_sync(make_sync(1, started=datetime(2024, 3, 1, 12)))
        assert store.last_sync() is None


# -- sharing, locks and errors ----------------------------------------------


def test_second_store_on_the_same_dir(state_dir: Path, clock: FakeClock) -> None:
    with (
        LocalStore(state_dir, clock=clock) as first,
        LocalStore(state_dir, clock=clock) as second,
    ):
        assert second.migrations_applied == ()
        created = first.apply_workflow(make_request("a"))
        assert second.get_workflow(key("a")) == created
        second.apply_workflow(make_request("b"))
        assert list(first.applied_workflows(owner=OWNER)) == [key("a"), key("b")]
        # The second store sees the first's row and makes its identical apply a no-op.
        assert second.apply_workflow(make_request("a")) == created
        assert second.writes == 1


def test_stores_opened_at_once_migrate_once(state_dir: Path, clock: FakeClock) -> None:
    stores: list[LocalStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            stores.append(LocalStore(state_dir, clock=clock))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        applied = sorted(version for s in stores for version in s.migrations_applied)
        assert applied == [version for version, _ in MIGRATIONS]
    finally:
        for opened in stores:
            opened.close()


def test_one_store_shared_by_threads(store: LocalStore) -> None:
    errors: list[BaseException] = []

    def apply_some(prefix: str) -> None:
        try:
            for number in range(10):
                store.apply_workflow(make_request(f"{prefix}-{number}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=apply_some, args=(f"t{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.applied_workflows(owner=OWNER)) == 60
    assert store.writes == 60


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.apply_workflow(make_request("new")), id="apply"),
        pytest.param(lambda s: s.delete_workflow(key("wf"), owner=OWNER), id="delete"),
        pytest.param(lambda s: s.set_suspended(key("wf"), True), id="suspend"),
        pytest.param(lambda s: s.record_sync(make_sync(1)), id="record-sync"),
    ],
)
def test_locked_database_is_transient(
    state_dir: Path, clock: FakeClock, write: Callable[[LocalStore], object]
) -> None:
    with LocalStore(state_dir, clock=clock, busy_timeout_ms=50) as store:
        existing = store.apply_workflow(make_request("wf"))
        writes = store.writes
        holder = sqlite3.connect(store.path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(TransientError) as caught:
                write(store)
            assert str(store.path) in str(caught.value)
            assert "locked" in str(caught.value)
            assert store.get_workflow(key("wf")) == existing  # readers go on under WAL
        finally:
            holder.close()
        assert store.writes == writes
        write(store)  # once the lock is gone the same call succeeds
        assert store.writes == writes + 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(sqlite3.OperationalError("database is locked"), TransientError, id="locked"),
        pytest.param(sqlite3.OperationalError("disk I/O error"), TransientError, id="io"),
        pytest.param(
            sqlite3.OperationalError("database or disk is full"), TransientError, id="full"
        ),
        pytest.param(sqlite3.OperationalError("no such table: x"), TerminalError, id="schema"),
        pytest.param(
            sqlite3.IntegrityError("UNIQUE constraint failed"), TerminalError, id="integrity"
        ),
        pytest.param(sqlite3.DatabaseError("file is not a database"), TerminalError, id="not-a-db"),
    ],
)
def test_sqlite_errors_are_translated(error: sqlite3.Error, expected: type[Exception]) -> None:
    path = Path("/var/lib/reconciler/state.db")
    translated = store_module._translate_error(error, path=path, doing="apply workflows")
    assert type(translated) is expected
    assert str(path) in str(translated)
    assert str(error) in str(translated)


def test_closed_store_raises_terminal(state_dir: Path, clock: FakeClock) -> None:
    store = LocalStore(state_dir, clock=clock)
    store.close()
    store.close()  # closing twice is fine
    with pytest.raises(TerminalError, match="closed"):
        store.get_workflow(key("wf"))


# -- checkpoints ---------------------------------------------------------------


def test_checkpoints_run_on_their_own_thread_not_in_the_commit(store: LocalStore) -> None:
    conn = store._conn  # the pragma of the store's own connection
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_NET_PAGES
    checkpointer = store._checkpointer
    checkpointer.threshold = 1  # any log wakes it
    store.apply_many([make_request(f"wf-{n}") for n in range(50)])
    deadline = time.monotonic() + 30
    while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.checkpoints >= 1
    with raw(store) as other:  # the log was copied into the database file
        assert other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    store.close()
    assert checkpointer._thread is not None
    assert not checkpointer._thread.is_alive()
