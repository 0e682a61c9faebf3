"""The benchmark workloads stay valid manifests."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from bench.dag_overhead import chain_manifest
from bench.generate import SCHEDULE_TIMEZONES, manifests, scheduled_manifests
from reconciler.core.loading import load_manifest_file, load_manifest_set
from reconciler.core.repoconfigs import RepoConfig
from reconciler.core.slots import fire_times


def test_generated_manifests_are_valid_and_distinct() -> None:
    files = manifests(50, seed=3)
    result = load_manifest_set(files, config=RepoConfig(), variables={})
    assert [p.render() for p in result.errors] == []
    assert len(result.workflows) == 50


def test_scheduling_workload_is_valid_and_spread_over_zones_and_crons() -> None:
    result = load_manifest_set(scheduled_manifests(80), config=RepoConfig(), variables={})
    assert [p.render() for p in result.errors] == []
    assert len(result.workflows) == 80
    schedules = [w.manifest.spec.schedule for w in result.workflows.values()]
    assert all(s is not None and s.concurrency_policy == "Allow" for s in schedules)
    crons = Counter(c for s in schedules if s is not None for c in s.crons)
    assert crons == {"* * * * *": 72, "*/2 * * * *": 8}
    assert {s.timezone for s in schedules if s is not None} == set(SCHEDULE_TIMEZONES)


def test_every_two_minutes_in_kathmandu_fires_on_odd_utc_minutes() -> None:
    """The workload's claim: the quarter-hour offset moves ``*/2`` to the other minutes."""
    after, until = (
        datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 12, 4, tzinfo=UTC),
    )
    assert [
        t.minute for t in fire_times(["*/2 * * * *"], "Asia/Kathmandu", after=after, until=until)
    ] == [1, 3]
    assert [
        t.minute for t in fire_times(["*/2 * * * *"], "Asia/Kolkata", after=after, until=until)
    ] == [2, 4]


def test_chain_manifest_is_one_valid_chain_of_true() -> None:
    loaded = load_manifest_file(
        "chain.yaml", chain_manifest(5).encode(), workspace="public", variables={}
    )
    assert [p.render() for p in loaded.errors] == []
    (workflow,) = loaded.workflows
    dag = workflow.manifest.spec.dag
    assert [step.name for step in dag] == ["s0", "s1", "s2", "s3", "s4"]
    assert [tuple(step.depends) for step in dag] == [(), ("s0",), ("s1",), ("s2",), ("s3",)]
    assert {(s.spec.stack, tuple(s.spec.stack_spec["command"])) for s in dag} == {
        ("container", ("true",))
    }
