"""DAG math: cycles named, order stable; random DAGs accepted exactly when acyclic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.dags import dependents, find_cycle, topological_order
from reconciler.core.loading import validate_document
from reconciler.core.yamldocs import load_documents


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        pytest.param({"a": []}, None, id="single"),
        pytest.param({"a": [], "b": ["a"], "c": ["a", "b"]}, None, id="diamond-ish"),
        pytest.param({"a": ["a"]}, ["a", "a"], id="self-loop"),
        pytest.param({"a": ["b"], "b": ["a"]}, ["a", "b", "a"], id="two-cycle"),
        pytest.param({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"], id="three-cycle"),
        pytest.param({"x": [], "a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"], id="tail"),
        pytest.param({"a": ["missing"]}, None, id="unknown-ignored"),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


@pytest.mark.parametrize(
    ("graph", "order"),
    [
        pytest.param({"c": ["b"], "b": ["a"], "a": []}, ["a", "b", "c"], id="chain"),
        pytest.param({"x": [], "y": [], "z": ["x", "y"]}, ["x", "y", "z"], id="fan-in"),
        pytest.param({"m": ["r"], "r": [], "n": ["r"]}, ["r", "m", "n"], id="fan-out-stable"),
    ],
)
def test_topological_order(graph: dict[str, list[str]], order: list[str]) -> None:
    assert topological_order(graph) == order


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"]})


def test_dependents_inverts_edges() -> None:
    assert dependents({"a": [], "b": ["a"], "c": ["a"]}) == {"a": ["b", "c"], "b": [], "c": []}


def _has_cycle_by_reduction(graph: dict[str, list[str]]) -> bool:
    """Independent oracle: repeatedly remove steps with no remaining dependencies."""
    remaining = {k: set(v) for k, v in graph.items()}
    while True:
        free = [k for k, v in remaining.items() if not v]
        if not free:
            return bool(remaining)
        for k in free:
            del remaining[k]
        for v in remaining.values():
            v.difference_update(free)


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    size = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(size)]
    return {name: sorted(draw(st.sets(st.sampled_from(names), max_size=size))) for name in names}


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_random_dags_accepted_exactly_when_acyclic(graph: dict[str, list[str]]) -> None:
    lines = ["version: v2alpha", "name: random-dag", "type: workflow", "spec:", "  dag:"]
    for name, deps in graph.items():
        lines += [f"    - name: {name}", f"      depends: [{', '.join(deps)}]", "      spec: {}"]
    document = load_documents("\n".join(lines).encode()).documents[0]
    manifest, findings = validate_document(document, {})
    cyclic = _has_cycle_by_reduction(graph)
    assert (manifest is None) == cyclic, [f.message for f in findings]
    if cyclic:
        assert any("cycle" in f.message or "itself" in f.message for f in findings)
    else:
        order = topological_order(graph)
        assert sorted(order) == sorted(graph)
        for name, deps in graph.items():
            assert all(order.index(d) < order.index(name) for d in deps)
