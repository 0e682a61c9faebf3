"""The ``Backend`` port (and the workflow half of ``RunBackend``), on every backend.

Applied workflows: create, idempotent re-apply, update, all-or-nothing
batches, owners, deletion, the lazily loaded inventory, suspension and
lifecycle states, sync records, and the workflows stamp the scheduler
polls to know when to reload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.syncs import SyncRecord, SyncResult
from reconciler.core.workflows import AppliedWorkflow, InventoryEntry, WorkflowState
from reconciler.ports import RunBackend, TerminalError
from tests.contract import OTHER_OWNER, OWNER, SOURCE, at, key, request
from tests.contract.conftest import Capabilities


def assert_utc(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert moment.utcoffset() == UTC.utcoffset(None)


def live(backend: RunBackend, name: str, workspace: str = "public") -> AppliedWorkflow:
    workflow = backend.get_workflow(key(name, workspace))
    assert workflow is not None
    return workflow


# -- applying -------------------------------------------------------------------------


def test_apply_creates_an_active_workflow(backend: RunBackend) -> None:
    wanted = request("nightly")
    applied = backend.apply_workflow(wanted)
    assert applied.key == key("nightly") == wanted.desired.key
    assert (applied.workspace, applied.name) == ("public", "nightly")
    assert applied.spec == wanted.desired.spec  # nulls, empty lists and unicode kept as they are
    assert applied.spec_hash == wanted.desired.spec_hash
    assert (applied.source, applied.path, applied.revision) == (
        SOURCE,
        "workflows/nightly.yaml",
        "1" * 40,
    )
    assert applied.owner == OWNER
    assert (applied.state, applied.suspended) == ("active", False)
    assert_utc(applied.created_at)
    assert_utc(applied.updated_at)
    assert applied.created_at <= applied.updated_at
    assert backend.get_workflow(key("nightly")) == applied


def test_get_workflow_of_an_unknown_key_is_none(backend: RunBackend) -> None:
    backend.apply_workflow(request("nightly"))
    assert backend.get_workflow(key("other")) is None
    assert backend.get_workflow(key("nightly", "elsewhere")) is None


def test_identical_apply_changes_nothing(backend: RunBackend) -> None:
    """Same spec hash and path: nothing is written, not even the new revision or source."""
    first = backend.apply_workflow(request("nightly"))
    stamp = backend.workflows_stamp()
    again = backend.apply_workflow(request("nightly", revision="2" * 40, source="/checkout"))
    assert again == first
    assert backend.get_workflow(key("nightly")) == first
    assert backend.workflows_stamp() == stamp


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"image": "alpine:3.21"}, id="spec"),
        pytest.param({"path": "moved/nightly.yaml"}, id="path"),
        pytest.param({"image": "alpine:3.21", "path": "moved/nightly.yaml"}, id="both"),
    ],
)
def test_apply_with_a_change_updates_in_place(backend: RunBackend, change: dict[str, Any]) -> None:
    first = backend.apply_workflow(request("nightly"))
    backend.set_suspended(key("nightly"), True)
    backend.set_state(key("nightly"), "running")
    before = live(backend, "nightly")
    wanted = request("nightly", revision="2" * 40, source="/checkout", **change)
    updated = backend.apply_workflow(wanted)
    assert updated.spec == wanted.desired.spec
    assert updated.spec_hash == wanted.desired.spec_hash
    assert updated.path == wanted.desired.path
    assert (updated.revision, updated.source) == ("2" * 40, "/checkout")
    assert (updated.key, updated.workspace, updated.name, updated.owner) == (
        first.key,
        first.workspace,
        first.name,
        first.owner,
    )
    # An update keeps what the reconciler did not apply: suspension and lifecycle state.
    assert (updated.state, updated.suspended) == ("running", True)
    assert updated.created_at == first.created_at
    assert updated.updated_at >= before.updated_at
    assert backend.get_workflow(key("nightly")) == updated


def test_apply_refuses_a_workflow_of_another_owner(backend: RunBackend) -> None:
    theirs = backend.apply_workflow(request("nightly", owner=OTHER_OWNER))
    stamp = backend.workflows_stamp()
    with pytest.raises(TerminalError):
        backend.apply_workflow(request("nightly", owner=OWNER, image="alpine:3.21"))
    with pytest.raises(TerminalError):  # even with nothing to change
        backend.apply_workflow(request("nightly", owner=OWNER))
    assert backend.get_workflow(key("nightly")) == theirs
    assert backend.workflows_stamp() == stamp


def test_apply_many_applies_every_request_in_order(backend: RunBackend) -> None:
    backend.apply_workflow(request("existing"))
    wanted = [
        request("zeta"),
        request("existing", image="alpine:3.21"),
        request("alpha", workspace="team-a"),
    ]
    applied = backend.apply_many(wanted)
    assert [w.key for w in applied] == [r.desired.key for r in wanted]
    assert [w.spec_hash for w in applied] == [r.desired.spec_hash for r in wanted]
    assert applied == [backend.get_workflow(r.desired.key) for r in wanted]
    assert backend.apply_many(wanted) == applied  # all the same now: the stored rows again


def test_apply_many_without_read_back_returns_nothing(backend: RunBackend) -> None:
    wanted = [request("a"), request("b")]
    assert backend.apply_many(wanted, read_back=False) == []
    assert [w.spec for w in backend.all_workflows()] == [r.desired.spec for r in wanted]
    assert backend.apply_many(wanted, read_back=False) == []  # all the same: still []
    changed = [request("a", image="alpine:3.21")]
    assert backend.apply_many(changed, read_back=False) == []
    assert live(backend, "a").spec_hash == changed[0].desired.spec_hash


def test_apply_many_of_nothing(backend: RunBackend) -> None:
    assert backend.apply_many([]) == []
    assert backend.apply_many([], read_back=False) == []
    assert backend.all_workflows() == []


def test_apply_many_is_all_or_nothing(backend: RunBackend) -> None:
    mine = backend.apply_workflow(request("mine"))
    theirs = backend.apply_workflow(request("theirs", owner=OTHER_OWNER))
    stamp = backend.workflows_stamp()
    with pytest.raises(TerminalError):
        backend.apply_many(
            [
                request("mine", image="alpine:3.21"),  # an update, before the refusal
                request("new"),  # a create, before the refusal
                request("theirs"),  # refused: another owner's
                request("later"),
            ]
        )
    assert backend.get_workflow(key("mine")) == mine
    assert backend.get_workflow(key("new")) is None
    assert backend.get_workflow(key("later")) is None
    assert backend.get_workflow(key("theirs")) == theirs
    assert backend.workflows_stamp() == stamp


# -- inventory and listing ----------------------------------------------------------------


@pytest.fixture
def populated(backend: RunBackend) -> RunBackend:
    """mine: public/a, team-a/b; theirs: public/c; public/gone deleted; public/d suspended."""
    backend.apply_many(
        [
            request("a"),
            request("b", workspace="team-a"),
            request("c", owner=OTHER_OWNER),
            request("d"),
            request("gone"),
        ]
    )
    backend.set_suspended(key("d"), True)
    backend.delete_workflow(key("gone"), owner=OWNER)
    return backend


def test_applied_workflows_are_the_owners_live_workflows(populated: RunBackend) -> None:
    mine = populated.applied_workflows(owner=OWNER)
    assert sorted(mine) == [key("a"), key("d"), key("b", "team-a")]
    for workflow_key, workflow in mine.items():
        assert workflow == populated.get_workflow(workflow_key)
    assert list(populated.applied_workflows(owner=OTHER_OWNER)) == [key("c")]
    assert populated.applied_workflows(owner="nobody") == {}


def test_inventory_holds_keys_paths_and_hashes(populated: RunBackend) -> None:
    inventory = populated.inventory(owner=OWNER)
    assert sorted(inventory) == sorted(populated.applied_workflows(owner=OWNER))
    for workflow_key, entry in inventory.items():
        applied = populated.get_workflow(workflow_key)
        assert applied is not None
        assert isinstance(entry, InventoryEntry)
        assert (entry.key, entry.path, entry.spec_hash) == (
            applied.key,
            applied.path,
            applied.spec_hash,
        )
    assert list(populated.inventory(owner=OTHER_OWNER)) == [key("c")]
    assert populated.inventory(owner="nobody") == {}


@pytest.fixture
def spec_loads(monkeypatch: pytest.MonkeyPatch) -> list[WorkflowKey]:
    """Every spec an InventoryEntry loads, by key, in order (observed on the value type)."""
    loads: list[WorkflowKey] = []
    original = InventoryEntry.__init__

    def counting_init(
        self: InventoryEntry,
        key: WorkflowKey,
        *,
        path: str,
        spec_hash: str,
        load_spec: Callable[[], Mapping[str, Any]],
    ) -> None:
        def load() -> Mapping[str, Any]:
            loads.append(key)
            return load_spec()

        original(self, key, path=path, spec_hash=spec_hash, load_spec=load)

    monkeypatch.setattr(InventoryEntry, "__init__", counting_init)
    return loads


def test_inventory_loads_specs_on_demand(
    populated: RunBackend, spec_loads: list[WorkflowKey]
) -> None:
    inventory = populated.inventory(owner=OWNER)
    assert spec_loads == []  # planning compares hashes: no spec is loaded until asked for
    entry = inventory[key("a")]
    assert entry.spec == request("a").desired.spec
    assert entry.spec == live(populated, "a").spec
    assert spec_loads == [key("a")]  # once, for that entry alone


def test_all_workflows_lists_every_owner_ordered_by_key(
    populated: RunBackend, caps: Capabilities
) -> None:
    listed = populated.all_workflows()
    assert [w.key for w in listed] == [key("a"), key("c"), key("d"), key("b", "team-a")]
    assert listed == [populated.get_workflow(w.key) for w in listed]
    assert {w.owner for w in listed} == {OWNER, OTHER_OWNER}
    assert live(populated, "d").suspended
    with_deleted = populated.all_workflows(include_deleted=True)
    if caps.keeps_deleted:
        assert [w.key for w in with_deleted] == [
            key("a"),
            key("c"),
            key("d"),
            key("gone"),
            key("b", "team-a"),
        ]
        assert [w.state for w in with_deleted if w.key == key("gone")] == ["deleted"]
    else:
        assert with_deleted == listed


def test_no_workflows(backend: RunBackend) -> None:
    assert backend.all_workflows() == []
    assert backend.all_workflows(include_deleted=True) == []
    assert backend.applied_workflows(owner=OWNER) == {}
    assert backend.inventory(owner=OWNER) == {}


# -- deleting -------------------------------------------------------------------------------


def test_delete_by_the_owner(backend: RunBackend, caps: Capabilities) -> None:
    applied = backend.apply_workflow(request("nightly"))
    backend.apply_workflow(request("kept"))
    stamp = backend.workflows_stamp()
    backend.delete_workflow(key("nightly"), owner=OWNER)
    assert backend.workflows_stamp() != stamp
    assert list(backend.applied_workflows(owner=OWNER)) == [key("kept")]
    assert list(backend.inventory(owner=OWNER)) == [key("kept")]
    assert [w.key for w in backend.all_workflows()] == [key("kept")]
    tombstone = backend.get_workflow(key("nightly"))
    if caps.keeps_deleted:
        assert tombstone is not None
        assert tombstone.state == "deleted"
        assert (tombstone.key, tombstone.spec, tombstone.owner) == (
            applied.key,
            applied.spec,
            applied.owner,
        )
        assert backend.all_workflows(include_deleted=True) == [live(backend, "kept"), tombstone]
    else:
        assert tombstone is None
        assert [w.key for w in backend.all_workflows(include_deleted=True)] == [key("kept")]


def test_delete_refuses_a_workflow_of_another_owner(backend: RunBackend) -> None:
    theirs = backend.apply_workflow(request("nightly", owner=OTHER_OWNER))
    stamp = backend.workflows_stamp()
    with pytest.raises(TerminalError):
        backend.delete_workflow(key("nightly"), owner=OWNER)
    assert backend.get_workflow(key("nightly")) == theirs
    assert list(backend.applied_workflows(owner=OTHER_OWNER)) == [key("nightly")]
    assert backend.workflows_stamp() == stamp


def test_deleting_what_is_not_there_does_nothing(backend: RunBackend) -> None:
    backend.apply_workflow(request("kept"))
    backend.apply_workflow(request("gone"))
    backend.delete_workflow(key("gone"), owner=OWNER)
    stamp = backend.workflows_stamp()
    backend.delete_workflow(key("never"), owner=OWNER)
    backend.delete_workflow(key("gone"), owner=OWNER)  # already deleted
    backend.delete_workflow(key("gone"), owner=OTHER_OWNER)  # a deleted one has no owner
    assert backend.workflows_stamp() == stamp
    assert [w.key for w in backend.all_workflows()] == [key("kept")]


def test_apply_after_delete_creates_it_afresh(backend: RunBackend) -> None:
    """Any owner may apply a deleted workflow again; it comes back active and resumed."""
    first = backend.apply_workflow(request("nightly", owner=OTHER_OWNER))
    backend.set_suspended(key("nightly"), True)
    backend.set_state(key("nightly"), "failed")
    backend.delete_workflow(key("nightly"), owner=OTHER_OWNER)
    stamp = backend.workflows_stamp()
    revived = backend.apply_workflow(request("nightly", owner=OWNER, revision="2" * 40))
    assert backend.workflows_stamp() != stamp
    assert (revived.state, revived.suspended, revived.owner) == ("active", False, OWNER)
    assert revived.revision == "2" * 40
    assert revived.spec == first.spec
    assert revived.created_at >= first.created_at
    assert revived.created_at <= revived.updated_at
    assert backend.get_workflow(key("nightly")) == revived
    assert list(backend.applied_workflows(owner=OWNER)) == [key("nightly")]
    assert backend.applied_workflows(owner=OTHER_OWNER) == {}


# -- suspension and lifecycle states ----------------------------------------------------------


def test_set_suspended_toggles(backend: RunBackend) -> None:
    first = backend.apply_workflow(request("nightly"))
    suspended = backend.set_suspended(key("nightly"), True)
    assert suspended.suspended is True
    assert suspended.updated_at >= first.updated_at
    assert (suspended.spec, suspended.spec_hash, suspended.state, suspended.created_at) == (
        first.spec,
        first.spec_hash,
        first.state,
        first.created_at,
    )
    assert backend.get_workflow(key("nightly")) == suspended
    stamp = backend.workflows_stamp()
    assert backend.set_suspended(key("nightly"), True) == suspended  # already: no write
    assert backend.workflows_stamp() == stamp
    resumed = backend.set_suspended(key("nightly"), False)
    assert resumed.suspended is False
    assert backend.get_workflow(key("nightly")) == resumed
    # The suspension survives an identical apply and an update.
    backend.set_suspended(key("nightly"), True)
    assert backend.apply_workflow(request("nightly")).suspended is True
    assert backend.apply_workflow(request("nightly", image="alpine:3.21")).suspended is True


STATES: tuple[WorkflowState, ...] = ("running", "succeeded", "failed", "active", "creating")


def test_set_state_records_each_state(backend: RunBackend) -> None:
    first = backend.apply_workflow(request("nightly"))
    for state in STATES:
        changed = backend.set_state(key("nightly"), state)
        assert changed.state == state
        # updated_at tells when the applied spec last changed, not when a run last started.
        assert changed.updated_at == first.updated_at
        assert (changed.spec, changed.suspended, changed.revision) == (
            first.spec,
            first.suspended,
            first.revision,
        )
        assert backend.get_workflow(key("nightly")) == changed
        assert backend.set_state(key("nightly"), state) == changed  # already: the same row
    assert backend.apply_workflow(request("nightly")).state == "creating"  # apply keeps it


def test_set_state_cannot_delete(backend: RunBackend) -> None:
    backend.apply_workflow(request("nightly"))
    with pytest.raises(ValueError, match="delete_workflow"):
        backend.set_state(key("nightly"), "deleted")
    assert live(backend, "nightly").state == "active"


@pytest.mark.parametrize("deleted", [False, True], ids=["unknown", "deleted"])
def test_setters_refuse_a_workflow_that_is_not_there(backend: RunBackend, deleted: bool) -> None:
    if deleted:
        backend.apply_workflow(request("nightly"))
        backend.delete_workflow(key("nightly"), owner=OWNER)
    with pytest.raises(TerminalError):
        backend.set_suspended(key("nightly"), True)
    with pytest.raises(TerminalError):
        backend.set_state(key("nightly"), "running")
    assert backend.all_workflows() == []


# -- the workflows stamp ----------------------------------------------------------------------


def test_stamp_stays_without_writes(populated: RunBackend) -> None:
    stamp = populated.workflows_stamp()
    assert isinstance(stamp, str)
    populated.all_workflows(include_deleted=True)
    populated.applied_workflows(owner=OWNER)
    populated.inventory(owner=OWNER)[key("a")].spec  # noqa: B018 - loading is a read
    populated.get_workflow(key("a"))
    populated.last_sync()
    assert populated.workflows_stamp() == stamp
    assert populated.workflows_stamp() == stamp


def test_stamp_stays_after_writes_that_change_nothing(populated: RunBackend) -> None:
    stamp = populated.workflows_stamp()
    populated.apply_workflow(request("a", revision="2" * 40))
    populated.apply_many([request("a"), request("b", workspace="team-a")], read_back=False)
    populated.set_suspended(key("d"), True)
    populated.set_suspended(key("a"), False)
    populated.set_state(key("a"), "active")
    populated.delete_workflow(key("gone"), owner=OWNER)
    populated.delete_workflow(key("never"), owner=OWNER)
    assert populated.workflows_stamp() == stamp


WRITES: dict[str, Callable[[RunBackend], object]] = {
    "create": lambda b: b.apply_workflow(request("new")),
    "create-in-batch": lambda b: b.apply_many([request("a"), request("new")], read_back=False),
    "update-spec": lambda b: b.apply_workflow(request("a", image="alpine:3.21")),
    "move": lambda b: b.apply_workflow(request("a", path="moved/a.yaml")),
    "suspend": lambda b: b.set_suspended(key("a"), True),
    "resume": lambda b: b.set_suspended(key("d"), False),
    "delete": lambda b: b.delete_workflow(key("a"), owner=OWNER),
    "recreate": lambda b: b.apply_workflow(request("gone")),
    "another-owner": lambda b: b.apply_workflow(request("c", owner=OTHER_OWNER, image="x:1")),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_stamp_changes_after_each_workflow_write(populated: RunBackend, write: str) -> None:
    stamp = populated.workflows_stamp()
    WRITES[write](populated)
    changed = populated.workflows_stamp()
    assert changed != stamp
    assert populated.workflows_stamp() == changed  # and then stays


def test_stamp_changes_after_set_state(populated: RunBackend) -> None:
    stamp = populated.workflows_stamp()
    populated.set_state(key("a"), "running")
    assert populated.workflows_stamp() != stamp


def test_stamp_changes_after_each_of_many_quick_writes(backend: RunBackend) -> None:
    seen = {backend.workflows_stamp()}
    for name in ("a", "b", "c"):
        backend.apply_workflow(request(name))
        seen.add(backend.workflows_stamp())
        backend.set_suspended(key(name), True)
        seen.add(backend.workflows_stamp())
        backend.set_suspended(key(name), False)
        seen.add(backend.workflows_stamp())
    assert len(seen) == 10


# -- sync records -----------------------------------------------------------------------------


def full_sync(number: int) -> SyncRecord:
    return SyncRecord(
        started_at=at(number * 60),
        finished_at=at(number * 60 + 2.5),
        revision=Revision(f"{number:040x}"),
        result="failed",
        summary={"created": 2, "updated": 1, "moved": 0, "deleted": 1, "unchanged": 7},
        plan=[
            {"action": "create", "key": "public/a", "path": "workflows/a.yaml", "fields": []},
            {"action": "update", "key": "public/b", "fields": ["spec.dag[0].spec.stackSpec"]},
        ],
        errors=[
            {"path": "workflows/bad.yaml", "loc": ["spec", "dag", 0], "message": "nicht gültig"}
        ],
        message=f"pass {number}: 1 file failed ✗",
        source={
            "revision": f"{number:040x}",
            "author": "Zoë <zoe@example.org>",
            "message": "Add a, change b\n\nLonger text.",
            "committed_at": "2026-11-28T11:58:00+00:00",
            "changed_paths": ["workflows/a.yaml", "workflows/b.yaml"],
        },
    )


def test_sync_records_round_trip(backend: RunBackend) -> None:
    assert backend.last_sync() is None
    first = full_sync(1)
    backend.record_sync(first)
    assert backend.last_sync() == first
    bare = SyncRecord(
        started_at=at(120), finished_at=at(120.000001), revision=None, result="blocked"
    )
    backend.record_sync(bare)
    assert backend.last_sync() == bare
    third = full_sync(3)
    backend.record_sync(third)
    stored = backend.last_sync()
    assert stored == third
    assert stored is not None
    assert_utc(stored.started_at)
    assert_utc(stored.finished_at)


@pytest.mark.parametrize("result", ["succeeded", "failed", "blocked", "unchanged"])
def test_every_sync_result_is_kept(backend: RunBackend, result: SyncResult) -> None:
    record = SyncRecord(
        started_at=at(0), finished_at=at(1), revision=Revision("a" * 40), result=result
    )
    backend.record_sync(record)
    assert backend.last_sync() == record


# -- problems: workflows git cannot bring up to date --------------------------------------


def _kinds(backend: RunBackend, name: str) -> list[str]:
    return [e.kind for e in reversed(backend.events(key=key(name)))]


def test_problems_are_reported_once_and_recovery_is_reported(backend: RunBackend) -> None:
    backend.apply_workflow(request("a"))
    backend.apply_workflow(request("b"))
    backend.inventory(owner=OWNER)  # a pass lists its inventory first
    backend.report_problems({key("a"): "its manifest does not load"}, owner=OWNER)
    backend.report_problems({key("a"): "its manifest does not load"}, owner=OWNER)  # again
    assert _kinds(backend, "a") == ["Stalled"]
    assert _kinds(backend, "b") == []
    assert backend.events(key=key("a"))[0].message == "its manifest does not load"
    backend.inventory(owner=OWNER)
    backend.report_problems({key("a"): "apply failed: quota"}, owner=OWNER)  # a new reason
    backend.inventory(owner=OWNER)
    backend.report_problems({}, owner=OWNER)
    backend.report_problems({}, owner=OWNER)
    assert _kinds(backend, "a") == ["Stalled", "Stalled", "Recovered"]
    assert _kinds(backend, "b") == []


def test_reporting_no_problems_writes_nothing(backend: RunBackend) -> None:
    backend.apply_workflow(request("a"))
    stamp = backend.workflows_stamp()
    backend.inventory(owner=OWNER)
    backend.report_problems({}, owner=OWNER)
    assert backend.events(key=key("a")) == []
    assert backend.workflows_stamp() == stamp


def test_workflow_states_count_live_workflows_of_every_owner(backend: RunBackend) -> None:
    assert backend.workflow_states() == {}
    backend.apply_workflow(request("a"))
    backend.apply_workflow(request("b"))
    backend.apply_workflow(request("c", owner=OTHER_OWNER))
    backend.set_state(key("b"), "running")
    assert backend.workflow_states() == {"active": 2, "running": 1}
    backend.delete_workflow(key("a"), owner=OWNER)
    assert backend.workflow_states() == {"active": 1, "running": 1}
