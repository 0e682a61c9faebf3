"""Graph math for a Workflow's DAG of steps: cycles and a stable order.

Edges map each step to the steps it depends on. Functions here never raise on
a bad graph; they report it, so validation can phrase the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(depends: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed path (``['a', 'b', 'a']``), or None if acyclic.

    Dependencies on unknown steps are ignored here (they are reported apart).
    The search is iterative and visits steps in their given order, so the
    cycle reported is deterministic.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(depends, white)
    for root in depends:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        iters = [iter(depends[root])]
        colour[root] = grey
        while iters:
            node = path[-1]
            for upstream in iters[-1]:
                if upstream not in colour:
                    continue
                if colour[upstream] == grey:
                    start = path.index(upstream)
                    return [*path[start:], upstream]
                if colour[upstream] == white:
                    colour[upstream] = grey
                    path.append(upstream)
                    iters.append(iter(depends[upstream]))
                    break
            else:
                colour[node] = black
                path.pop()
                iters.pop()
    return None


def topological_order(depends: Mapping[str, Sequence[str]]) -> list[str]:
    """Steps in an order where each comes after all it depends on.

    Ties keep the manifest's order. The graph must be acyclic (check with
    find_cycle first); unknown dependencies are ignored.
    """
    remaining = {name: {d for d in deps if d in depends} for name, deps in depends.items()}
    order: list[str] = []
    done: set[str] = set()
    while remaining:
        ready = [name for name, deps in remaining.items() if deps <= done]
        if not ready:
            raise ValueError("the graph has a cycle; call find_cycle() first")
        for name in ready:
            order.append(name)
            done.add(name)
            del remaining[name]
    return order


def dependents(depends: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Invert the edges: for each step, the steps that depend on it."""
    result: dict[str, list[str]] = {name: [] for name in depends}
    for name, deps in depends.items():
        for upstream in deps:
            if upstream in result:
                result[upstream].append(name)
    return result
