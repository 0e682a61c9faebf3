"""The planner: creates, updates, moves, deletes; fail-closed deletion and the guard."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.names import WorkflowKey
from reconciler.core.planning import DeletionPolicy, allows_prune, diff_specs, make_plan
from reconciler.core.workflows import DesiredWorkflow, spec_hash


def wf(name: str, *, path: str | None = None, cron: str = "0 2 * * *") -> DesiredWorkflow:
    spec: dict[str, Any] = {
        "name": name,
        "spec": {"schedule": {"crons": [cron]}, "dag": [{"name": "a", "depends": []}]},
    }
    return DesiredWorkflow.from_spec(
        key=WorkflowKey(f"public/{name}"),
        workspace="public",
        name=name,
        path=path or f"{name}.yaml",
        spec=spec,
        spec_hash=spec_hash(spec),
    )


def keyed(*workflows: DesiredWorkflow) -> dict[WorkflowKey, DesiredWorkflow]:
    return {w.key: w for w in workflows}


def kinds(desired: list[DesiredWorkflow], current: list[DesiredWorkflow], **kw: Any) -> list[str]:
    plan = make_plan(keyed(*desired), keyed(*current), complete=kw.pop("complete", True), **kw)
    return [f"{a.kind}:{a.key.split('/')[1]}" for a in plan.actions]


@pytest.mark.parametrize(
    ("desired", "current", "expected"),
    [
        pytest.param([wf("a")], [], ["create:a"], id="create"),
        pytest.param([wf("a")], [wf("a")], [], id="unchanged"),
        pytest.param([wf("a", cron="0 3 * * *")], [wf("a")], ["update:a"], id="update"),
        pytest.param([wf("a", path="x/a.yaml")], [wf("a")], ["move:a"], id="rename-is-move"),
        pytest.param([], [wf("a")], ["delete:a"], id="delete-only-one"),
        pytest.param(
            [wf("b"), wf("c")], [wf("a"), wf("b"), wf("c")], ["delete:a"], id="delete-a-third"
        ),
    ],
)
def test_plan_actions(
    desired: list[DesiredWorkflow], current: list[DesiredWorkflow], expected: list[str]
) -> None:
    assert kinds(desired, current) == expected


def test_incomplete_source_deletes_nothing_but_still_creates() -> None:
    plan = make_plan(keyed(wf("new")), keyed(wf("gone")), complete=False)
    assert [a.kind for a in plan.actions] == ["create"]
    assert [a.key for a in plan.held_deletes] == ["public/gone"]
    assert plan.holds[0].reason == "SourceIncomplete"


@pytest.mark.parametrize(
    ("remaining", "total", "policy", "held"),
    [
        pytest.param(2, 4, DeletionPolicy(), False, id="half-is-allowed"),
        pytest.param(1, 4, DeletionPolicy(), True, id="three-quarters-held"),
        pytest.param(0, 4, DeletionPolicy(), True, id="everything-held"),
        pytest.param(0, 1, DeletionPolicy(), False, id="only-workflow-not-held"),
        pytest.param(0, 4, DeletionPolicy(allow_prune=True), False, id="override"),
        pytest.param(7, 10, DeletionPolicy(max_count=2), True, id="count-limit"),
        pytest.param(8, 10, DeletionPolicy(max_count=2), False, id="count-limit-ok"),
    ],
)
def test_deletion_guard(remaining: int, total: int, policy: DeletionPolicy, held: bool) -> None:
    current = [wf(f"w{i}") for i in range(total)]
    plan = make_plan(keyed(*current[:remaining]), keyed(*current), complete=True, policy=policy)
    assert bool(plan.holds) == held
    deleted = [a for a in plan.actions if a.kind == "delete"]
    assert len(deleted) == (0 if held else total - remaining)
    if held:
        assert plan.holds[0].reason == "DeletionGuard"
        assert "Reconciler-Allow-Prune: true" in plan.holds[0].message


def test_field_level_changes_are_readable() -> None:
    old = wf("a").spec
    new = wf("a", cron="0 3 * * *").spec
    assert [c.render() for c in diff_specs(old, new)] == [
        "spec.schedule.crons[0]: '0 2 * * *' → '0 3 * * *'"
    ]


def test_inserted_step_is_one_change() -> None:
    old = {"dag": [{"name": "a"}, {"name": "c", "x": 1}]}
    new = {"dag": [{"name": "a"}, {"name": "b"}, {"name": "c", "x": 1}]}
    assert [c.render() for c in diff_specs(old, new)] == ["dag[1]: added {'name': 'b'}"]


@pytest.mark.parametrize(
    ("messages", "allowed"),
    [
        pytest.param(["fix\n\nReconciler-Allow-Prune: true"], True, id="trailer"),
        pytest.param(["x", "y\n\nreconciler-allow-prune: yes"], True, id="any-commit"),
        pytest.param(["Reconciler-Allow-Prune: false"], False, id="false"),
        pytest.param(["mentions Reconciler-Allow-Prune in text"], False, id="not-a-trailer"),
    ],
)
def test_allows_prune(messages: list[str], allowed: bool) -> None:
    assert allows_prune(messages) == allowed
