"""Push webhooks: GitHub, GitLab and a generic token endpoint, each asking for a sync now.

Every request is checked before its body is read further: the size limit
first (413), then the signature or token, compared in constant time (401
when missing or wrong), then the event: pushes to another branch are
ignored (200, nothing done). An accepted push pokes the daemon, and pokes
coalesce: a burst of webhooks before the next pass starts makes one pass.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20  # GitHub caps its payloads at 25 MB; pushes are far smaller


@dataclass(frozen=True)
class WebhookSecrets:
    github: str | None = None  # the HMAC secret set on the GitHub webhook
    gitlab: str | None = None  # the GitLab webhook's secret token
    generic: str | None = None  # a bearer token for anything else (CI, scripts)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class Webhooks:
    def __init__(
        self,
        secrets: WebhookSecrets,
        *,
        branch: str,
        poke: Callable[[], None],
        count: Callable[[str, str], None] = lambda source, result: None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.secrets = secrets
        self.branch = branch
        self.poke = poke
        self.count = count
        self.max_body = max_body

    def handle(
        self, source: str, headers: Mapping[str, str], read: Callable[[int], bytes]
    ) -> Answer:
        """One delivery; ``headers`` with lower-case names, ``read(n)`` the body's bytes."""
        answer = self._handle(source, headers, read)
        result = {200: "ignored", 202: "accepted"}.get(answer.status, f"refused_{answer.status}")
        self.count(source, result)
        return answer

    def _handle(
        self, source: str, headers: Mapping[str, str], read: Callable[[int], bytes]
    ) -> Answer:
        secret = {
            "github": self.secrets.github,
            "gitlab": self.secrets.gitlab,
            "generic": self.secrets.generic,
        }.get(source)
        if secret is None:
            setting = (
                f"webhook_{source}_secret_file"
                if source in ("github", "gitlab")
                else ("webhook_token_file")
            )
            return Answer(404, {"error": f"no {source} webhook here: set {setting} to enable it"})
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return Answer(400, {"error": "bad Content-Length"})
        if length > self.max_body:
            return Answer(413, {"error": f"body over {self.max_body} bytes"})
        body = read(length) if length > 0 else b""
        if not _authentic(source, secret, headers, body):
            log.warning("webhook %s refused: bad or missing signature", source)
            return Answer(401, {"error": "bad or missing signature or token"})
        return self._event(source, headers, body)

    def _event(self, source: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if source == "github":
            kind = headers.get("x-github-event", "")
            if kind == "ping":
                return Answer(200, {"ok": True, "pong": True})
            if kind != "push":
                return Answer(200, {"ignored": f"event {kind or 'unnamed'}"})
        if source == "gitlab":
            kind = headers.get("x-gitlab-event", "")
            if kind not in ("Push Hook", "System Hook"):
                return Answer(200, {"ignored": f"event {kind or 'unnamed'}"})
        payload = _json(body)
        if payload is None and source != "generic":
            return Answer(400, {"error": "the body is not a JSON object"})
        ref = (payload or {}).get("ref")
        wanted = f"refs/heads/{self.branch}"
        if ref is not None and ref not in (wanted, self.branch):
            return Answer(200, {"ignored": f"push to {ref}, not {wanted}"})
        log.info("webhook %s: a push to %s; syncing now", source, wanted)
        self.poke()
        return Answer(202, {"accepted": True, "sync": "requested"})


def _authentic(source: str, secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    if source == "github":
        given = headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(given.encode(), expected.encode())
    if source == "gitlab":
        return hmac.compare_digest(headers.get("x-gitlab-token", "").encode(), secret.encode())
    authorization = headers.get("authorization", "")
    token = authorization.removeprefix("Bearer ").strip() if authorization else ""
    token = token or headers.get("x-reconciler-token", "")
    return hmac.compare_digest(token.encode(), secret.encode())


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
