"""End to end: a real bare git remote, the git source, the SQLite backend and the sync pipeline."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.app.syncing import Syncer, SyncOptions
from reconciler.core.planning import DeletionPolicy
from tests.app.gitfixtures import Remote

EXAMPLES = {
    "public/customer-batch-pipeline",
    "public/daily-report",
    "public/parallel-batch-pipeline",
    "public/projected-workflow",
}


class FakeClock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        self.moment += timedelta(milliseconds=10)
        return self.moment

    def monotonic(self) -> float:
        return self.moment.timestamp()


class World:
    """A remote, a source, a store and a syncer, wired as the daemon wires them."""

    def __init__(self, root: Path, *, policy: DeletionPolicy | None = None) -> None:
        self.root = root
        self.remote = Remote(root)
        self.clock = FakeClock()
        self.store = LocalStore(root / "state", clock=self.clock)
        self.sleeps: list[float] = []
        self.policy = policy or DeletionPolicy()
        self.syncer = self.new_syncer()

    def new_syncer(self) -> Syncer:
        self.source = GitSource(self.remote.url, branch="main", cache_dir=self.root / "cache")
        return Syncer(
            self.source,
            self.store,
            clock=self.clock,
            options=SyncOptions(owner="default", policy=self.policy),
            sleep=self.sleeps.append,
        )

    def applied(self) -> dict[str, str]:
        """Applied workflow key -> path."""
        return {k: w.path for k, w in self.store.applied_workflows(owner="default").items()}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_add_change_delete_rename(world: World) -> None:
    world.remote.copy_examples()
    outcome = world.syncer.sync()
    assert outcome.result == "succeeded", outcome.errors
    assert set(world.applied()) == EXAMPLES

    text = world.remote.read("workflows/daily-report.yaml")
    world.remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", "cpu: 750m"))
    world.remote.commit("Raise the CPU limit")
    outcome = world.syncer.sync()
    assert outcome.plan is not None
    assert outcome.plan.summary()["update"] == 1
    (update,) = outcome.plan.actions
    assert [c.render() for c in update.changes] == [
        "spec.dag[0].spec.resources.limits.cpu: '500m' → '750m'"
    ]
    stored = world.store.get_workflow(update.key)
    assert stored is not None
    assert stored.spec["spec"]["dag"][0]["spec"]["resources"]["limits"]["cpu"] == "750m"

    world.remote.move("workflows/daily-report.yaml", "reports/daily-report.yaml")
    world.remote.commit("Move the report")
    outcome = world.syncer.sync()
    assert outcome.plan is not None
    assert [a.kind for a in outcome.plan.actions] == ["move"]
    assert world.applied()["public/daily-report"] == "reports/daily-report.yaml"

    world.remote.remove("workflows/parallel-batch-pipeline.yaml")
    world.remote.commit("Remove the parallel pipeline")
    outcome = world.syncer.sync()
    assert outcome.result == "succeeded"
    assert set(world.applied()) == EXAMPLES - {"public/parallel-batch-pipeline"}
    gone = world.store.get_workflow("public/parallel-batch-pipeline")  # type: ignore[arg-type]
    assert gone is not None
    assert gone.state == "deleted"


def test_broken_manifest_and_deletion_in_one_commit(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    before = {w.key: w for w in world.store.all_workflows()}
    world.remote.remove("workflows/parallel-batch-pipeline.yaml")
    broken = world.remote.read("workflows/daily-report.yaml").replace("cpu: 100m", "cpu: lots")
    world.remote.write("workflows/daily-report.yaml", broken)
    world.remote.write(
        "workflows/new.yaml",
        world.remote.read("workflows/projected-workflow.yaml").replace(
            "name: projected-workflow", "name: brand-new"
        ),
    )
    world.remote.commit("Break one, delete one, add one")
    outcome = world.syncer.sync()
    assert outcome.result == "failed"
    assert [e.path for e in outcome.errors] == ["workflows/daily-report.yaml"]
    assert outcome.errors[0].field == "spec.dag[0].spec.resources.requests.cpu"
    after = {w.key: w for w in world.store.all_workflows()}
    # nothing deleted, the broken workflow exactly as it was, the valid new one applied
    assert after["public/parallel-batch-pipeline"] == before["public/parallel-batch-pipeline"]
    assert after["public/daily-report"] == before["public/daily-report"]
    assert "public/brand-new" in after
    assert outcome.plan is not None
    assert [a.key for a in outcome.plan.held_deletes] == ["public/parallel-batch-pipeline"]
    last = world.store.last_sync()
    assert last is not None
    assert last.errors[0]["path"] == "workflows/daily-report.yaml"


def test_guard_trips_then_trailer_overrides(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    for name in ("daily-report", "parallel-batch-pipeline", "projected-workflow"):
        world.remote.remove(f"workflows/{name}.yaml")
    world.remote.commit("Remove three of four")
    outcome = world.syncer.sync()
    assert outcome.result == "blocked"
    assert set(world.applied()) == EXAMPLES
    assert "Reconciler-Allow-Prune: true" in outcome.message

    world.remote.commit("Yes, really\n\nReconciler-Allow-Prune: true")
    outcome = world.syncer.sync()
    assert outcome.result == "succeeded"
    assert set(world.applied()) == {"public/customer-batch-pipeline"}


def test_guard_override_by_operator_flag(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    for path in world.applied().values():
        world.remote.remove(path)
    world.remote.commit("Empty the repository")
    assert world.syncer.sync().result == "blocked"
    assert world.syncer.sync(force=True, allow_prune=True).result == "succeeded"
    assert world.applied() == {}


def test_force_push_to_rewritten_history(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    text = world.remote.read("workflows/daily-report.yaml")
    world.remote.write("workflows/daily-report.yaml", text.replace("500m", "900m"))
    new_head = world.remote.rewrite_history()
    outcome = world.syncer.sync()
    assert outcome.result == "succeeded"
    assert outcome.revision == new_head
    stored = world.store.get_workflow("public/daily-report")  # type: ignore[arg-type]
    assert stored is not None
    assert stored.revision == new_head


def test_unreachable_remote_changes_nothing_and_recovers(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    before = world.store.all_workflows()
    hidden = world.root / "hidden.git"
    world.remote.bare.rename(hidden)
    outcome = world.syncer.sync()
    assert outcome.result == "failed"
    assert "source unavailable" in outcome.message
    assert world.store.all_workflows() == before
    writes = world.store.writes
    world.syncer.sync()
    assert world.store.writes == writes  # one record per outage, not one per tick
    hidden.rename(world.remote.bare)
    world.remote.remove("workflows/daily-report.yaml")
    world.remote.commit("Remove daily report")
    assert world.syncer.sync().result == "succeeded"
    assert "public/daily-report" not in world.applied()


def test_no_op_pass_writes_and_parses_nothing(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    writes, parses, fetches = world.store.writes, world.syncer.parses, world.source.fetch_count
    lookups = world.source.remote_lookups
    outcome = world.syncer.sync()
    assert outcome.result == "unchanged"
    assert world.store.writes == writes
    assert world.syncer.parses == parses
    assert world.source.fetch_count == fetches
    assert world.source.remote_lookups == lookups + 1


def test_restart_with_unchanged_remote_is_a_no_op(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    writes = world.store.writes
    restarted = world.new_syncer()
    assert restarted.sync().result == "unchanged"
    assert restarted.parses == 0
    assert world.store.writes == writes


def test_one_changed_file_is_parsed_once(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    parses = world.syncer.parses
    text = world.remote.read("workflows/daily-report.yaml")
    world.remote.write("workflows/daily-report.yaml", text.replace("report", "reports"))
    world.remote.commit("Touch one file")
    world.syncer.sync()
    assert world.syncer.parses == parses + 1


def test_changed_variable_in_repo_config_reparses_dependents(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    config = world.remote.read(".reconciler.yaml")
    world.remote.write(".reconciler.yaml", config.replace("customer-batch-shared", "other"))
    world.remote.commit("Rename the shared volume")
    outcome = world.syncer.sync()
    assert outcome.plan is not None
    assert [a.key for a in outcome.plan.actions] == ["public/customer-batch-pipeline"]
    rendered = [c.render() for c in outcome.plan.actions[0].changes]
    assert len(rendered) == 3  # the volume of each of the three steps
    assert all("'id': 'other'" in line for line in rendered)


def test_subpath_and_branch(tmp_path: Path) -> None:
    remote = Remote(tmp_path, branch="release")
    remote.copy_examples()
    shutil.move(remote.work / "workflows", remote.work / "deploy")
    remote.commit("Manifests under deploy/")
    source = GitSource(remote.url, branch="release", path="deploy", cache_dir=tmp_path / "cache")
    store = LocalStore(tmp_path / "state", clock=FakeClock())
    syncer = Syncer(source, store, clock=FakeClock(), options=SyncOptions(owner="x"), sleep=print)
    outcome = syncer.sync()
    # the repo config is at the root, outside deploy/: ${SHARED_VOLUME_ID} is undefined there
    assert outcome.result == "failed"
    assert {e.path for e in outcome.errors} == {"customer-batch-pipeline.yaml"}
    assert {w.name for w in store.all_workflows()} == EXAMPLES_NAMES - {"customer-batch-pipeline"}


EXAMPLES_NAMES = {key.split("/")[1] for key in EXAMPLES}


def test_two_owners_never_touch_each_other(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    other = Syncer(
        world.source,
        world.store,
        clock=world.clock,
        options=SyncOptions(owner="other"),
        sleep=world.sleeps.append,
    )
    outcome = other.sync(force=True)
    assert outcome.result == "failed"
    assert set(outcome.failures) == EXAMPLES
    assert all("owner" in message for message in outcome.failures.values())
    assert set(world.applied()) == EXAMPLES


def test_sync_record_names_the_commit_and_changed_paths(world: World) -> None:
    world.remote.copy_examples()
    world.syncer.sync()
    text = world.remote.read("workflows/daily-report.yaml")
    world.remote.write("workflows/daily-report.yaml", text.replace("500m", "600m"))
    world.remote.write("README.md", "notes\n")
    revision = world.remote.commit("Tune the report\n\nMore CPU for month end.")
    world.syncer.sync()
    last = world.store.last_sync()
    assert last is not None
    assert last.source["revision"] == revision
    assert last.source["author"] == "Test Author <author@example.com>"
    assert last.source["message"] == "Tune the report\n\nMore CPU for month end."
    assert last.source["changed_paths"] == ["README.md", "workflows/daily-report.yaml"]
    assert last.duration_seconds > 0


def test_transient_backend_error_is_retried_with_backoff(world: World) -> None:
    """A real lock on the SQLite file: the first tries fail, the lock goes away during backoff."""
    import sqlite3

    world.remote.copy_examples()
    store = LocalStore(world.root / "state", clock=world.clock, busy_timeout_ms=10)
    syncer = Syncer(
        world.source,
        store,
        clock=world.clock,
        options=SyncOptions(owner="default"),
        sleep=lambda seconds: release(seconds),
    )
    blocker = sqlite3.connect(world.root / "state" / "state.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    delays: list[float] = []

    def release(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 2:
            blocker.execute("ROLLBACK")

    outcome = syncer.sync()
    blocker.close()
    assert outcome.result == "succeeded", (outcome.failures, outcome.message)
    assert len(store.applied_workflows(owner="default")) == 4
    assert len(delays) >= 2
    assert delays[1] > delays[0] * 1.2  # exponential, with jitter of at most ±20 %


def test_incremental_loads_equal_a_fresh_load_after_every_commit(tmp_path: Path) -> None:
    """The loader keeps its combined result between passes and updates only changed files;
    after every kind of change it must equal what a new loader reads from scratch."""
    from reconciler.app.syncing import SourceLoader

    remote = Remote(tmp_path)
    remote.copy_examples()

    def manifest(name: str, description: str = "d") -> str:
        return (
            f"version: v2alpha\nname: {name}\ntype: workflow\ndescription: {description}\n"
            "spec:\n  dag:\n    - name: a\n      spec:\n        stack: container\n"
            "        stackSpec: {image: alpine:3.20, command: ['true']}\n"
        )

    steps: list[Callable[[], None]] = [
        lambda: remote.write("workflows/one.yaml", manifest("one")),
        lambda: remote.write("workflows/one.yaml", manifest("one", "changed")),
        lambda: remote.write("workflows/copy.yaml", manifest("one")),  # defined twice
        lambda: remote.write("workflows/bad.yaml", "version: v2alpha\nname: Bad\n"),
        lambda: remote.remove("workflows/copy.yaml"),  # defined once again
        lambda: remote.move("workflows/one.yaml", "workflows/moved/one.yaml"),
        lambda: remote.write("workflows/bad.yaml", manifest("fixed")),
        lambda: remote.write("workflows/two.yaml", manifest("two") + "---\n" + manifest("two")),
        lambda: remote.write(".reconciler.yaml", "variables:\n  SHARED_VOLUME_ID: other\n"),
        lambda: remote.write("notes.txt", "not a manifest\n"),
        lambda: remote.write(".reconciler.yaml", "exclude: ['workflows/moved/*']\n"),
        lambda: remote.remove("workflows/two.yaml"),
        lambda: remote.remove(".reconciler.yaml"),
    ]
    kept = SourceLoader(GitSource(remote.url, cache_dir=tmp_path / "kept"), environ={})
    first = kept.load(remote.commit("examples"))
    assert len(first.desired) == 4
    parses = kept.parses
    messages: list[str] = []
    for number, step in enumerate(steps):
        step()
        revision = remote.commit(f"step {number}")
        fresh = SourceLoader(GitSource(remote.url, cache_dir=tmp_path / f"f{number}"), environ={})
        incremental, scratch = kept.load(revision), fresh.load(revision)
        assert incremental.desired == scratch.desired, number
        assert sorted(incremental.desired) == sorted(scratch.desired), number
        assert incremental.errors == scratch.errors, number
        messages += [e.message for e in incremental.errors]
    assert any("is also defined at" in m for m in messages)  # the steps met both kinds
    assert any("name" in m and "Bad" in m for m in messages)
    assert kept.parses - parses < fresh.parses * len(steps) // 2  # it did not parse it all again
