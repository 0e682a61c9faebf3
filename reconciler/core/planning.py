"""Desired (git) against applied (backend): the plan of creates, updates, moves and deletes.

Hashes of normalized specs are compared first, so an unchanged workflow costs
a string comparison; ``deepdiff`` explains only real updates. Deletion fails
closed: nothing is deleted unless the source was complete (fetched, every
file parsed and valid), only the caller's inventory is ever considered, and a
guard holds back a plan that would delete too much unless pruning is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from deepdiff import DeepDiff
from deepdiff.helper import CannotCompare

from reconciler.core.names import WorkflowKey
from reconciler.core.workflows import DesiredWorkflow

ActionKind = Literal["create", "update", "move", "delete", "unchanged"]
ALLOW_PRUNE_TRAILER = "Reconciler-Allow-Prune"


class Current(Protocol):
    """What the planner needs of a workflow that exists now (applied, or at a base revision)."""

    @property
    def key(self) -> WorkflowKey: ...
    @property
    def path(self) -> str: ...
    @property
    def spec(self) -> Mapping[str, Any]: ...
    @property
    def spec_hash(self) -> str: ...


@dataclass(frozen=True)
class FieldChange:
    """One field-level difference of an update."""

    path: str
    kind: Literal["changed", "added", "removed"]
    old: Any = None
    new: Any = None

    def render(self) -> str:
        if self.kind == "added":
            return f"{self.path}: added {_short(self.new)}"
        if self.kind == "removed":
            return f"{self.path}: removed (was {_short(self.old)})"
        return f"{self.path}: {_short(self.old)} → {_short(self.new)}"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    key: WorkflowKey
    desired: DesiredWorkflow | None = None
    current_path: str | None = None
    changes: tuple[FieldChange, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind,
            "workflow": self.key,
            "path": self.desired.path if self.desired else self.current_path,
            "from_path": self.current_path
            if self.kind == "move" or (self.kind == "update" and self._path_changed)
            else None,
            "changes": [c.render() for c in self.changes],
        }

    @property
    def _path_changed(self) -> bool:
        return self.desired is not None and self.current_path not in (None, self.desired.path)


@dataclass(frozen=True)
class DeletionPolicy:
    """The max-deletions guard.

    A plan is held when it would delete more than ``max_share`` of the applied
    workflows (and at least ``min_count_for_share`` of them, so removing the
    only workflow of a small repo is not held), or more than ``max_count``.
    ``allow_prune`` (the operator's flag, or a commit trailer
    ``Reconciler-Allow-Prune: true``) lets such a plan through.
    """

    max_share: float = 0.5
    min_count_for_share: int = 2
    max_count: int | None = None
    allow_prune: bool = False


@dataclass(frozen=True)
class Hold:
    """Why deletions were held back."""

    reason: Literal["SourceIncomplete", "DeletionGuard"]
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    held_deletes: tuple[Action, ...] = ()
    holds: tuple[Hold, ...] = ()
    unchanged: int = 0
    kept_invalid: tuple[Action, ...] = ()  # applied, but their manifest file failed to load

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "update": 0, "move": 0, "delete": 0}
        for action in self.actions:
            counts[action.kind] += 1
        counts["unchanged"] = self.unchanged
        counts["held_delete"] = len(self.held_deletes)
        counts["kept_invalid"] = len(self.kept_invalid)
        return counts


def make_plan(
    desired: Mapping[WorkflowKey, DesiredWorkflow],
    current: Mapping[WorkflowKey, Current],
    *,
    complete: bool,
    failed_paths: frozenset[str] = frozenset(),
    policy: DeletionPolicy = DeletionPolicy(),
) -> Plan:
    """The actions that make current equal to desired.

    ``current`` must be the caller's own inventory: keys outside it are never
    deleted. With ``complete`` false no deletion is planned at all. A current
    workflow missing from desired whose file is in ``failed_paths`` is kept
    as it is (its manifest is invalid, not gone).
    """
    actions: list[Action] = []
    unchanged = 0
    for key in sorted(desired):
        want = desired[key]
        have = current.get(key)
        if have is None:
            actions.append(Action("create", key, want))
        elif have.spec_hash != want.spec_hash:
            actions.append(
                Action("update", key, want, have.path, tuple(diff_specs(have.spec, want.spec)))
            )
        elif have.path != want.path:
            actions.append(Action("move", key, want, have.path))
        else:
            unchanged += 1
    missing = [key for key in sorted(current) if key not in desired]
    kept = tuple(
        Action("delete", key, None, current[key].path)
        for key in missing
        if current[key].path in failed_paths
    )
    deletes = [
        Action("delete", key, None, current[key].path)
        for key in missing
        if current[key].path not in failed_paths
    ]
    holds: list[Hold] = []
    if deletes and not complete:
        holds.append(
            Hold(
                "SourceIncomplete",
                f"{len(deletes)} deletion(s) held: the source could not be read completely "
                "(see the errors); nothing is deleted until every manifest loads",
            )
        )
    elif deletes and not policy.allow_prune and _guard_trips(len(deletes), len(current), policy):
        holds.append(
            Hold(
                "DeletionGuard",
                f"{len(deletes)} of {len(current)} workflows would be deleted, more than the "
                f"guard allows ({_guard_text(policy)}); if this is intended, add the trailer "
                f"'{ALLOW_PRUNE_TRAILER}: true' to the commit message or run with --allow-prune",
            )
        )
    if holds:
        return Plan(tuple(actions), tuple(deletes), tuple(holds), unchanged, kept)
    return Plan((*actions, *deletes), (), (), unchanged, kept)


def _guard_trips(deletes: int, applied: int, policy: DeletionPolicy) -> bool:
    if policy.max_count is not None and deletes > policy.max_count:
        return True
    return deletes >= policy.min_count_for_share and deletes > policy.max_share * applied


def _guard_text(policy: DeletionPolicy) -> str:
    text = f"at most {policy.max_share:.0%}"
    if policy.max_count is not None:
        text += f" and at most {policy.max_count}"
    return text


def allows_prune(messages: list[str]) -> bool:
    """Whether any commit message carries ``Reconciler-Allow-Prune: true`` as a trailer."""
    for message in messages:
        for line in message.splitlines():
            name, sep, value = line.partition(":")
            is_trailer = sep and name.strip().lower() == ALLOW_PRUNE_TRAILER.lower()
            if is_trailer and value.strip().lower() in ("true", "yes", "1"):
                return True
    return False


def _compare_steps(first: Any, second: Any, level: Any = None) -> bool:
    """Match list items by ``name`` (DAG steps, env vars by ``key``) so an insert is one change."""
    for field_name in ("name", "key", "id"):
        if isinstance(first, dict) and isinstance(second, dict) and field_name in first:
            return bool(first.get(field_name) == second.get(field_name))
    raise CannotCompare() from None


def diff_specs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldChange]:
    """Field-level changes from old to new, in a stable order."""
    diff = DeepDiff(
        dict(old),
        dict(new),
        iterable_compare_func=_compare_steps,
        verbose_level=2,
        view="tree",
    )
    changes: list[FieldChange] = []
    for report, items in diff.items():
        for item in items:
            path = _render_path(item.path(output_format="list"))
            if report in ("values_changed", "type_changes") and item.t1 is None:
                changes.append(FieldChange(path, "added", None, item.t2))
            elif report in ("values_changed", "type_changes") and item.t2 is None:
                changes.append(FieldChange(path, "removed", item.t1, None))
            elif report in ("values_changed", "type_changes"):
                changes.append(FieldChange(path, "changed", item.t1, item.t2))
            elif report in ("dictionary_item_added", "iterable_item_added"):
                changes.append(FieldChange(path, "added", None, item.t2))
            elif report in ("dictionary_item_removed", "iterable_item_removed"):
                changes.append(FieldChange(path, "removed", item.t1, None))
            elif report == "iterable_item_moved":
                continue  # an index shift caused by an insert or removal reported above
            else:
                changes.append(FieldChange(path, "changed", item.t1, item.t2))
    if not changes and diff:
        changes.append(FieldChange("(order)", "changed", "items in one order", "another order"))
    return sorted(changes, key=lambda c: c.path)


def _render_path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
