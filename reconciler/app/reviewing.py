"""``reconciler plan``: what merging a change would do, for a pull-request comment.

The head revision is planned against either a base revision of the same
repository or the applied state of a backend, with the same loader, planner
and guard the daemon uses, so the review shows what the daemon will do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from reconciler.adapters.gitsource import RepositoryReader
from reconciler.app.syncing import SourceLoader
from reconciler.core.names import WorkflowKey
from reconciler.core.planning import Current, DeletionPolicy, allows_prune, make_plan
from reconciler.core.planreports import PlanReport
from reconciler.ports import Backend


def review_change(
    repository: Path,
    *,
    head: str,
    base: str | None,
    path: str,
    backend: Backend | None,
    owner: str,
    policy: DeletionPolicy,
    environ: Mapping[str, str],
    now: datetime,
) -> PlanReport:
    """Plan head against base (a revision) or, without base, against the backend."""
    reader = RepositoryReader(repository, path=path)
    loader = SourceLoader(reader, environ=environ)
    try:
        head_revision = reader.resolve(head)
        loaded = loader.load(head_revision)
        current: Mapping[WorkflowKey, Current]
        if base is not None:
            base_revision = reader.resolve(base)
            current = loader.load(base_revision).desired
            commits = reader.commits_between(base_revision, head_revision)
            base_label = base_revision[:12]
        else:
            if backend is None:
                raise ValueError("plan needs --base REV or a backend to compare with")
            current = backend.inventory(owner=owner)
            last = backend.last_sync()
            previous = last.revision if last is not None else None
            commits = reader.commits_between(previous, head_revision)
            base_label = "applied state"
        prune = policy.allow_prune or allows_prune([c.message for c in commits])
        plan = make_plan(
            loaded.desired,
            current,
            complete=not loaded.errors,
            failed_paths=frozenset(e.path for e in loaded.errors),
            policy=DeletionPolicy(
                max_share=policy.max_share,
                min_count_for_share=policy.min_count_for_share,
                max_count=policy.max_count,
                allow_prune=prune,
            ),
        )
        return PlanReport(plan, base_label, head_revision[:12], loaded.errors, now)
    finally:
        loader.close()
        reader.close()
