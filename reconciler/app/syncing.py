"""One reconcile pass: source -> load -> plan -> apply -> record, as a short list of phases.

``Syncer.sync`` is what ``reconciler sync`` runs once and the daemon runs on
every tick. A pass whose revision equals the last completed one does nothing
at all (one remote lookup, no parse, no write). Files are parsed again only
when their blob id changed (a cache keyed by blob id, path, workspace and
variables). Each workflow is applied on its own: one failure never stops the
others, and transient failures are retried with jittered backoff.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.core.backoffs import Backoff
from reconciler.core.loading import load_manifest_file, load_repo_config
from reconciler.core.names import Revision, WorkflowKey
from reconciler.core.planning import Action, DeletionPolicy, Plan, allows_prune, make_plan
from reconciler.core.problems import Problem
from reconciler.core.repoconfigs import CONFIG_FILE, RepoConfig
from reconciler.core.signing import CommitCheck, OwnershipRule, Signer, refusals
from reconciler.core.syncs import SyncRecord, SyncResult
from reconciler.core.variables import merge_variables
from reconciler.core.workflows import DesiredWorkflow, WorkflowApply
from reconciler.ports import Backend, Clock, ReconcilerError, Snapshot, Source, TransientError

log = logging.getLogger(__name__)
CREATED_BY = "created-by/"  # + workflow key: the signer whose commit created it
EVENTS_PER_PASS = 100  # beyond this many changes a pass records one summary event
_EVENT_KINDS = {"create": "Applied", "update": "Updated", "move": "Moved", "delete": "Deleted"}

_CacheKey = tuple[str, str, str, tuple[tuple[str, str], ...], int]


@dataclass
class SyncOutcome:
    """What a pass did; ``record`` is None for a pass that found nothing new."""

    revision: Revision | None
    result: SyncResult
    plan: Plan | None = None
    record: SyncRecord | None = None
    errors: list[Problem] = field(default_factory=list)
    failures: dict[WorkflowKey, str] = field(default_factory=dict)
    message: str = ""
    config: RepoConfig | None = None  # the repository's .reconciler.yaml, when it was read

    @property
    def ok(self) -> bool:
        return self.result in ("succeeded", "unchanged")


@dataclass(frozen=True)
class SyncOptions:
    owner: str
    policy: DeletionPolicy = field(default_factory=DeletionPolicy)
    backoff: Backoff = field(default_factory=Backoff)
    environ: Mapping[str, str] = field(default_factory=dict)
    verification: Verification | None = None  # apply only signed, authorized commits


@dataclass(frozen=True)
class Verification:
    """The daemon's signers (never the repository's) and git's allowed-signers file of them."""

    signers: tuple[Signer, ...]
    allowed_signers_file: Path

    @property
    def by_principal(self) -> dict[str, Signer]:
        return {signer.principal: signer for signer in self.signers}


@dataclass
class LoadedSource:
    """A snapshot read and validated: the desired set and everything wrong with it."""

    snapshot: Snapshot
    config: RepoConfig
    errors: tuple[Problem, ...]
    desired: dict[WorkflowKey, DesiredWorkflow]
    changed_paths: tuple[str, ...] | None  # vs the snapshot loaded before; None for the first

    def source_info(self, *, limit: int = 200) -> dict[str, Any]:
        """The commit and the changed paths, as a sync record keeps them."""
        commit = self.snapshot.commit
        info: dict[str, Any] = {"revision": self.snapshot.revision}
        if commit is not None:
            info |= {
                "author": commit.author,
                "message": commit.message,
                "committed_at": commit.committed_at.isoformat(),
            }
        if self.changed_paths is not None:
            info["changed_paths"] = list(self.changed_paths[:limit])
            info["changed_count"] = len(self.changed_paths)
        return info


@dataclass(frozen=True)
class ParsedFile:
    """What a sync keeps of one manifest file: its problems and its workflows.

    The validated models are not kept: the normalized spec (as JSON text, inside
    each ``DesiredWorkflow``) carries everything a plan needs, in a fraction of
    the memory of 10,000 pydantic models.
    """

    errors: tuple[Problem, ...]
    workflows: tuple[tuple[int, DesiredWorkflow], ...]  # (line of its document, workflow)


def parse_file(
    path: str, data: bytes, *, workspace: str, variables: Mapping[str, str], max_bytes: int
) -> ParsedFile:
    """Load, validate and normalize one file."""
    load = load_manifest_file(
        path, data, workspace=workspace, variables=variables, max_bytes=max_bytes
    )
    return ParsedFile(
        load.errors,
        tuple(
            (w.line, DesiredWorkflow.from_manifest(w.manifest, workspace=w.workspace, path=path))
            for w in load.workflows
        ),
    )


@contextmanager
def _cyclic_gc_paused(pause: bool) -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a big parse (a cold start).

    Parsing allocates millions of short-lived objects while the results pile up,
    and every full collection scans all of them: with it running, a 10,000-file
    parse spent about half its time in the collector. Reference counting still
    frees everything that is not a cycle; the collector runs again afterwards.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class SourceLoader:
    """Reads snapshots of a source and validates them, parsing only changed files.

    Between passes it keeps, per manifest path, the parsed file and its cache key
    (blob id, path, workspace, variables, size limit), plus the combined result:
    the desired workflow of every name defined once, the names defined twice and
    the paths with errors. A pass then costs one comparison of the file lists and
    work in proportion to the files that changed; a changed repo config or
    variables (which can change every file's meaning) checks every path again,
    still parsing only files whose key changed.

    (It replaces a loader that parsed changed blobs but combined every file
    again on every pass, and parsed big batches in worker processes: the
    ``yaml_rs`` fast path made one process faster than the pool's start-up,
    pickling and memory.)
    """

    PAUSE_GC_FROM = 200  # files to parse in one pass; see _cyclic_gc_paused

    def __init__(self, source: Source, *, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.parses = 0
        self._context: tuple[RepoConfig, tuple[tuple[str, str], ...]] | None = None
        self._parsed: dict[str, tuple[_CacheKey, ParsedFile]] = {}  # manifest path -> file
        self._definers: dict[WorkflowKey, list[tuple[str, int, DesiredWorkflow]]] = {}
        self._desired: dict[WorkflowKey, DesiredWorkflow] = {}  # names defined exactly once
        self._twice: set[WorkflowKey] = set()  # names defined more than once
        self._error_paths: set[str] = set()
        self._previous_files: Mapping[str, str] | None = None

    def close(self) -> None:
        """Nothing to release (kept for callers that close every helper they start)."""

    def load_config(self, revision: Revision) -> RepoConfig:
        """Only the repository's config at revision (for a daemon that starts up to date)."""
        config, _ = self._config(self.source.snapshot(revision))
        return config

    def _config(self, snapshot: Snapshot) -> tuple[RepoConfig, list[Problem]]:
        config_blob = snapshot.files.get(CONFIG_FILE)
        config_bytes = self.source.read_blobs([config_blob])[config_blob] if config_blob else None
        config, errors = load_repo_config(config_bytes)
        return config, list(errors)

    def load(self, revision: Revision) -> LoadedSource:
        """Read the snapshot and validate every manifest, parsing only changed files."""
        snapshot = self.source.snapshot(revision)
        config, config_errors = self._config(snapshot)
        variables = merge_variables(config.variables, self.environ)
        context = (config, tuple(sorted(variables.items())))
        files = snapshot.files
        changed = None
        if self._previous_files is not None:
            before = self._previous_files
            changed = tuple(
                sorted(p for p in before.keys() | files.keys() if before.get(p) != files.get(p))
            )
        touched: Iterable[str] = changed or ()
        if context != self._context or changed is None:
            # the config may have changed which paths are manifests, their workspaces or
            # variables: check every path again (only files whose key changed are parsed)
            self._context = context
            touched = files.keys() | self._parsed.keys()
        wanted: dict[str, _CacheKey] = {}
        gone: list[str] = []
        for path in touched:
            blob = files.get(path)
            if blob is not None and config.is_manifest_path(path):
                workspace = config.workspaces.workspace_for(path)
                key = (blob, path, workspace, context[1], config.limits.max_manifest_bytes)
                held = self._parsed.get(path)
                if held is None or held[0] != key:
                    wanted[path] = key
            elif path in self._parsed:
                gone.append(path)
        for path in gone:
            self._forget(path)
        contents = self.source.read_blobs({key[0] for key in wanted.values()}) if wanted else {}
        with _cyclic_gc_paused(len(wanted) >= self.PAUSE_GC_FROM):
            self._parse(wanted, contents, variables)
        self._previous_files = files
        errors = (*config_errors, *snapshot.problems, *self._manifest_errors())
        return LoadedSource(snapshot, config, tuple(errors), dict(self._desired), changed)

    def _parse(
        self, wanted: dict[str, _CacheKey], contents: dict[str, bytes], variables: dict[str, str]
    ) -> None:
        for path in sorted(wanted):
            blob, _, workspace, _, max_bytes = key = wanted[path]
            parsed = parse_file(
                path,
                contents[blob],
                workspace=workspace,
                variables=variables,
                max_bytes=max_bytes,
            )
            self.parses += 1
            self._forget(path)
            self._remember(path, key, parsed)

    # -- the combined result, kept up to date one file at a time ------------------

    def _forget(self, path: str) -> None:
        held = self._parsed.pop(path, None)
        if held is None:
            return
        self._error_paths.discard(path)
        for key in {desired.key for _, desired in held[1].workflows}:
            self._definers[key] = [d for d in self._definers.get(key, []) if d[0] != path]
            self._recount(key)

    def _remember(self, path: str, key: _CacheKey, parsed: ParsedFile) -> None:
        self._parsed[path] = (key, parsed)
        if parsed.errors:
            self._error_paths.add(path)
        for line, desired in parsed.workflows:
            self._definers.setdefault(desired.key, []).append((path, line, desired))
            self._recount(desired.key)

    def _recount(self, key: WorkflowKey) -> None:
        definers = self._definers.get(key, [])
        self._twice.discard(key)
        self._desired.pop(key, None)
        if len(definers) == 1:
            self._desired[key] = definers[0][2]
        elif definers:
            self._twice.add(key)
        else:
            self._definers.pop(key, None)

    def _manifest_errors(self) -> list[Problem]:
        """Every file's errors, and each name defined twice (at every place it is)."""
        errors = [e for path in self._error_paths for e in self._parsed[path][1].errors]
        for key in self._twice:
            definers = self._definers[key]
            places = [f"{path}:{line}" for path, line, _ in definers]
            for path, line, desired in definers:
                others = ", ".join(p for p in places if p != f"{path}:{line}")
                errors.append(
                    Problem(
                        path,
                        line,
                        1,
                        "name",
                        f"workflow {desired.name!r} in workspace {desired.workspace!r} "
                        f"is also defined at {others}; names must be unique per workspace",
                    )
                )
        return sorted(errors)


class Syncer:
    """Keeps a backend equal to a source, one pass at a time."""

    def __init__(
        self,
        source: Source,
        backend: Backend,
        *,
        clock: Clock,
        options: SyncOptions,
        sleep: Callable[[float], None],
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.backend = backend
        self.clock = clock
        self.options = options
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.loader = SourceLoader(source, environ=options.environ)
        self._done_revision: Revision | None = None
        self._applied_config: RepoConfig | None = None
        self._refused_revision: Revision | None = None
        self._refused: SyncOutcome | None = None
        self._outage = False  # the last record is a failure: record the next pass, even unchanged
        self._checks: list[tuple[CommitCheck, str]] = []  # this pass's verified commits
        last = backend.last_sync()
        if last is not None and last.result == "succeeded" and last.revision:
            self._done_revision = last.revision

    def close(self) -> None:
        """Release what the loader holds (nothing today; kept for callers)."""
        self.loader.close()

    @property
    def parses(self) -> int:
        """Files parsed since start (the blob cache avoids most)."""
        return self.loader.parses

    # -- phases --------------------------------------------------------------

    def sync(self, *, force: bool = False, allow_prune: bool = False) -> SyncOutcome:
        """One pass. ``force`` re-plans even when the revision is unchanged."""
        started = self.clock.now()
        try:
            revision = self.source.latest_revision()
        except ReconcilerError as exc:
            return self._failed(started, None, f"source unavailable: {exc}")
        if revision == self._done_revision and not force and not self._outage:
            return SyncOutcome(revision, "unchanged")
        verified: list[dict[str, str]] = []
        if self.options.verification is not None:
            refused = self._verify(started, revision, self.options.verification, verified)
            if refused is not None:
                return refused
        try:
            loaded = self.loader.load(revision)
            previous = self._done_revision
            commits = self.source.commits_between(previous, revision) if previous else []
        except ReconcilerError as exc:
            return self._failed(started, revision, f"cannot read revision {revision}: {exc}")
        prune = allow_prune or self.options.policy.allow_prune
        prune = prune or allows_prune([c.message for c in commits])
        applied = self.backend.inventory(owner=self.options.owner)
        plan = make_plan(
            loaded.desired,
            applied,
            complete=not loaded.errors,
            failed_paths=frozenset(e.path for e in loaded.errors),
            policy=DeletionPolicy(
                max_share=self.options.policy.max_share,
                min_count_for_share=self.options.policy.min_count_for_share,
                max_count=self.options.policy.max_count,
                allow_prune=prune,
            ),
        )
        failures, transient = self.apply(plan, revision)
        self._record_creators(plan, failures)
        outcome = self._finish(
            started, revision, loaded, plan, failures, transient=transient, verified=verified
        )
        if outcome.result == "succeeded":
            self._applied_config = loaded.config
        return outcome

    def _verify(
        self,
        started: datetime,
        revision: Revision,
        verification: Verification,
        verified: list[dict[str, str]],
    ) -> SyncOutcome | None:
        """Check every commit since the last applied revision (only the tip on a first sync
        or after a force-push): signed by an allowed signer with a creating role, touching
        only paths the owners rules of the last applied config let them change. A refused
        revision changes nothing; the record and an event name the commit and the signer."""
        if revision == self._refused_revision and self._refused is not None:
            return self._refused
        try:
            commits = self.source.commits_between(self._done_revision, revision)
            owners = self._owners(revision)
            checks = [
                self.source.check_commit(c.revision, verification.allowed_signers_file)
                for c in reversed(commits)
            ]
        except ReconcilerError as exc:
            return self._failed(started, revision, f"cannot verify revision {revision}: {exc}")
        signers = verification.by_principal
        problems = [p for check in checks for p in refusals(check, signers=signers, owners=owners)]
        if problems:
            message = f"revision {revision[:12]} refused: {problems[0]}"
            for problem in problems:
                self.backend.add_event("sync", None, "ChangeRefused", problem)
                log.warning("change refused: %s", problem)
            record = SyncRecord(
                started_at=started,
                finished_at=self.clock.now(),
                revision=revision,
                result="failed",
                errors=[{"revision": revision, "message": p} for p in problems],
                message=message,
            )
            self.backend.record_sync(record)
            self._refused_revision = revision
            self._refused = SyncOutcome(revision, "failed", record=record, message=message)
            return self._refused
        self._checks = [(check, signers[check.principal or ""].name) for check in checks]
        for check in checks:
            signer = signers[check.principal or ""]
            roles = ", ".join(sorted(signer.roles))
            verified.append({"commit": check.revision, "signer": signer.name, "roles": roles})
            self.backend.add_event(
                "sync",
                None,
                "ChangeVerified",
                f"commit {check.revision[:12]} signed by {signer.name} ({roles})",
            )
        return None

    def _record_creators(self, plan: Plan, failures: dict[WorkflowKey, str]) -> None:
        """With verification on: who created each new workflow (the newest verified commit
        that touched its file), the owner unless .reconciler.yaml names one."""
        if not self._checks:
            return
        for action in plan.actions:
            if action.kind != "create" or action.key in failures or action.desired is None:
                continue
            path = action.desired.path
            creators = [name for check, name in self._checks if path in check.paths]
            if creators:
                self.backend.set_value(CREATED_BY + action.key, creators[-1])
        self._checks = []

    def _owners(self, revision: Revision) -> tuple[OwnershipRule, ...]:
        """The owners rules of the last applied config (a commit never widens its own
        rights); on a first sync, those of the revision itself."""
        if self._applied_config is None:
            self._applied_config = self.loader.load_config(self._done_revision or revision)
        return self._applied_config.owners

    def apply(self, plan: Plan, revision: Revision) -> tuple[dict[WorkflowKey, str], bool]:
        """Apply the plan; return failures by workflow, and whether any was transient.

        Creates, updates and moves go to the backend as one batch first (one
        transaction on SQLite). If the batch fails, each action is applied on
        its own, so one bad workflow never stops the others.
        """
        failures: dict[WorkflowKey, str] = {}
        transient = False
        pending = list(plan.actions)
        batch = [a for a in pending if a.kind != "delete"]
        if len(batch) > 1:
            try:
                self.backend.apply_many(
                    [self._request(a, revision) for a in batch], read_back=False
                )
                pending = [a for a in pending if a.kind == "delete"]
            except ReconcilerError as exc:
                log.info("batch apply failed (%s); applying one by one", exc)
        for action in pending:
            error = self._apply_one(action, revision)
            if error is not None:
                failures[action.key] = str(error)
                transient = transient or isinstance(error, TransientError)
                log.warning("apply failed", extra={"workflow": action.key, "action": action.kind})
        return failures, transient

    def _apply_one(self, action: Action, revision: Revision) -> ReconcilerError | None:
        attempt = 0
        while True:
            try:
                if action.kind == "delete":
                    self.backend.delete_workflow(action.key, owner=self.options.owner)
                else:
                    self.backend.apply_workflow(self._request(action, revision))
                return None
            except TransientError as exc:
                if not self.options.backoff.should_retry(attempt):
                    return exc
                self.sleep(self.options.backoff.delay(attempt, spread=self.rng.random()))
                attempt += 1
            except ReconcilerError as exc:
                return exc

    def _request(self, action: Action, revision: Revision) -> WorkflowApply:
        if action.desired is None:
            raise ValueError(f"a {action.kind} action has no desired workflow")
        return WorkflowApply(
            action.desired,
            source=self.source.display_url,
            revision=revision,
            owner=self.options.owner,
        )

    # -- bookkeeping ---------------------------------------------------------

    def _finish(
        self,
        started: datetime,
        revision: Revision,
        loaded: LoadedSource,
        plan: Plan,
        failures: dict[WorkflowKey, str],
        *,
        transient: bool,
        verified: list[dict[str, str]] | None = None,
    ) -> SyncOutcome:
        result: SyncResult
        if loaded.errors or failures:
            result = "failed"
            message = f"{len(loaded.errors)} manifest error(s), {len(failures)} apply failure(s)"
        elif plan.holds:
            result = "blocked"
            message = "; ".join(h.message for h in plan.holds)
        else:
            result = "succeeded"
            message = ""
        record = SyncRecord(
            started_at=started,
            finished_at=self.clock.now(),
            revision=revision,
            result=result,
            summary=plan.summary(),
            plan=[a.as_dict() for a in plan.actions]
            + [{**a.as_dict(), "action": "held-delete"} for a in plan.held_deletes]
            + [{**a.as_dict(), "action": "kept-invalid"} for a in plan.kept_invalid],
            errors=[p.as_dict() for p in loaded.errors]
            + [{"workflow": k, "message": v} for k, v in failures.items()],
            message=message,
            source={**loaded.source_info(), **({"verified": verified} if verified else {})},
        )
        self.backend.report_problems(
            self._problems(loaded, plan, failures), owner=self.options.owner
        )
        self._events(plan, failures, revision)
        self.backend.record_sync(record)
        self._outage = False
        if not transient:
            self._done_revision = revision
        return SyncOutcome(
            revision, result, plan, record, list(loaded.errors), failures, message, loaded.config
        )

    def _events(self, plan: Plan, failures: dict[WorkflowKey, str], revision: Revision) -> None:
        """An event per workflow changed (one summary for a big pass), and per guard tripped."""
        done = [a for a in plan.actions if a.key not in failures]
        if len(done) > EVENTS_PER_PASS:
            counts = ", ".join(f"{v} {k}" for k, v in plan.summary().items() if v)
            self.backend.add_event("sync", None, "Synced", f"revision {revision[:12]}: {counts}")
        else:
            for action in done:
                path = action.desired.path if action.desired else action.current_path
                self.backend.add_event(
                    action.key,
                    None,
                    _EVENT_KINDS[action.kind],
                    f"{action.kind} at revision {revision[:12]} ({path})",
                )
        for hold in plan.holds:
            self.backend.add_event("sync", None, "DeletionsHeld", hold.message)

    @staticmethod
    def _problems(
        loaded: LoadedSource, plan: Plan, failures: dict[WorkflowKey, str]
    ) -> dict[WorkflowKey, str]:
        """Why each workflow is not as git says: its file's first error, or its apply failure."""
        first_error: dict[str, str] = {}
        for error in loaded.errors:
            first_error.setdefault(error.path, error.render())
        problems = {
            action.key: f"its manifest does not load, the applied one is kept: "
            f"{first_error.get(action.current_path or '', 'see the sync errors')}"
            for action in plan.kept_invalid
        }
        problems.update({key: f"apply failed: {message}" for key, message in failures.items()})
        return problems

    def _failed(self, started: datetime, revision: Revision | None, message: str) -> SyncOutcome:
        record = SyncRecord(
            started_at=started,
            finished_at=self.clock.now(),
            revision=revision,
            result="failed",
            message=message,
        )
        last = self.backend.last_sync()
        if last is None or (last.result, last.message) != ("failed", message):
            self.backend.record_sync(record)  # one record per distinct outage, not per tick
        self._outage = True
        return SyncOutcome(revision, "failed", record=record, message=message)
