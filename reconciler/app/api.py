"""The daemon's HTTP API for using Workflows: trigger, cancel, read runs and logs.

Every request carries ``Authorization: Bearer TOKEN``; the token names a
person of the daemon's ``users`` (compared in constant time). A person may
use a workflow when they own it or its owner granted it to them or their
group (``core/access.py``). Every decision, allowed or not, and every
trigger with who asked, is an event (``reconciler events``).

    POST /api/v1/workflows/{workspace}/{name}/runs                 -> 201 {run_id}
    GET  /api/v1/workflows/{workspace}/{name}/runs/{run}           -> the run (JSON)
    GET  /api/v1/workflows/{workspace}/{name}/runs/{run}/log?step= -> text
    POST /api/v1/workflows/{workspace}/{name}/runs/{run}/cancel    -> 202
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from reconciler.app.syncing import CREATED_BY
from reconciler.app.triggering import TriggerRefused, trigger_run
from reconciler.core.access import AccessRule, Person, may_use
from reconciler.core.names import WorkflowKey
from reconciler.core.runs import Run
from reconciler.ports import Clock, ReconcilerError, RunBackend

log = logging.getLogger(__name__)
PREFIX = "/api/v1/workflows/"


@dataclass(frozen=True)
class User:
    name: str
    token: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    text: bytes | None = None  # a plain-text answer (a log) instead of JSON


class RunsApi:
    def __init__(
        self,
        store: RunBackend,
        *,
        users: Sequence[User],
        rules: Callable[[], Sequence[AccessRule]],
        read_log: Callable[[str, str, str], bytes | None],
        clock: Clock,
        notify: Callable[[], None] = lambda: None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.store = store
        self.users = tuple(users)
        self.rules = rules
        self.read_log = read_log
        self.clock = clock
        self.notify = notify  # the executor: a run was created
        self.redact = redact

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        route, _, query = path.partition("?")
        parts = route.removeprefix(PREFIX).strip("/").split("/")
        if not route.startswith(PREFIX) or len(parts) < 3 or parts[2] != "runs":
            return Reply(404, {"error": "not found: see /api/v1/workflows/{ws}/{name}/runs"})
        person = self._person(headers.get("authorization", ""))
        if person is None:
            return Reply(401, {"error": "a valid 'Authorization: Bearer TOKEN' is required"})
        workspace, name, rest = parts[0], parts[1], parts[3:]
        key = WorkflowKey(f"{workspace}/{name}")
        workflow = self.store.get_workflow(key)
        if workflow is None or workflow.state == "deleted":
            return Reply(404, {"error": f"no workflow {key}"})
        decision = may_use(
            person,
            workspace,
            name,
            rules=self.rules(),
            created_by=self.store.get_value(CREATED_BY + key),
        )
        action = f"{method} {'/'.join(rest) or 'runs'}"
        if not decision.allowed:
            self.store.add_event(key, None, "AccessDenied", f"{action}: {decision.why}")
            return Reply(403, {"error": decision.why})
        try:
            return self._allowed(method, key, rest, parse_qs(query), person, decision.why)
        except ReconcilerError as exc:
            return Reply(503, {"error": str(exc)})

    def _allowed(
        self,
        method: str,
        key: WorkflowKey,
        rest: list[str],
        query: dict[str, list[str]],
        person: Person,
        why: str,
    ) -> Reply:
        workspace = key.split("/", 1)[0]
        if method == "POST" and not rest:
            workflow = self.store.get_workflow(key)
            assert workflow is not None
            try:
                created = trigger_run(
                    self.store, workflow, requested_by=person.name, now=self.clock.now(), via="API"
                )
            except TriggerRefused as exc:
                return Reply(409, {"error": str(exc), "active_run": exc.active.run_id})
            self.store.add_event(key, created.run_id, "AccessAllowed", f"trigger: {why}")
            self.notify()
            return Reply(201, {"run_id": created.run_id, "workflow": key})
        run = self.store.get_run(workspace, rest[0]) if rest else None
        if run is None or run.key != key:
            return Reply(404, {"error": f"no run {rest[0] if rest else ''} of {key}"})
        if method == "GET" and len(rest) == 1:
            return Reply(200, _run_document(run))
        if method == "GET" and rest[1:] == ["log"]:
            steps = query.get("step") or [s.name for s in run.steps]
            chunks = []
            for step in steps:
                data = self.read_log(workspace, run.run_id, step)
                if data:
                    chunks.append(f"==> {step} <==\n".encode() + data)
            text = self.redact(b"".join(chunks).decode("utf-8", "replace")).encode()
            return Reply(200, text=text)
        if method == "POST" and rest[1:] == ["cancel"]:
            if not self.store.request_cancel(
                workspace, run.run_id, reason=f"cancelled by {person.name}"
            ):
                return Reply(409, {"error": f"run {run.run_id} is {run.state}: nothing to cancel"})
            self.store.add_event(key, run.run_id, "RunCancelRequested", f"by {person.name}")
            self.notify()
            return Reply(202, {"run_id": run.run_id, "cancel": "requested"})
        return Reply(405, {"error": f"{method} is not allowed here"})

    def _person(self, authorization: str) -> Person | None:
        token = authorization.removeprefix("Bearer ").strip()
        if not token:
            return None
        found = None
        for user in self.users:  # every token compared, in constant time each
            if hmac.compare_digest(user.token.encode(), token.encode()):
                found = user
        return None if found is None else Person(found.name, found.groups)


def _run_document(run: Run) -> dict[str, Any]:
    def iso(moment: Any) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "workflow": run.key,
        "run": run.run_id,
        "state": run.state,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "reason": run.reason,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "steps": [
            {
                "name": s.name,
                "state": s.state,
                "exit_code": s.exit_code,
                "reason": s.reason,
                "started_at": iso(s.started_at),
                "finished_at": iso(s.finished_at),
            }
            for s in run.steps
        ],
    }
