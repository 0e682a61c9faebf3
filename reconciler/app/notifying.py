"""Notifications of finished runs: targets from the daemon's settings, delivery over HTTP.

The repository's ``.reconciler.yaml`` says who hears of what (rules, in
``reconciler.core.notifications``); the daemon's settings say where
(``notify_targets``: a name -> a URL, or a file holding it such as a mounted
Secret). A rule naming a target the daemon does not have is logged once and
otherwise ignored: the repository cannot know the daemon's targets.

``Notifier.run_finished`` never blocks and never raises: it picks the
targets and queues. One worker thread POSTs JSON to each target, with a
per-target timeout, retrying connection errors, 429 and 5xx with backoff
(a ``Retry-After`` is honoured, up to ``MAX_RETRY_AFTER``); other answers are
final. The URL is a secret: logs name the target, never its URL, and
redirects are not followed.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reconciler.core.backoffs import Backoff
from reconciler.core.notifications import (
    NotificationKind,
    NotificationRule,
    generic_payload,
    kinds_for,
    select,
    slack_payload,
    unknown_targets,
)
from reconciler.core.runs import Run
from reconciler.ports import Clock

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.2, attempts=5)
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After would hold every other notification
MAX_URL_FILE_BYTES = 8192
USER_AGENT = "workflow-reconciler"


class NotifyError(Exception):
    """A target that cannot be used (its URL file unreadable, not an http(s) URL)."""


def _check_url(url: str) -> str | None:
    """Why ``url`` is not usable, in words that do not repeat it; None when it is."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if any(c.isspace() for c in url):
        return "must not contain whitespace"
    return None


class NotifyTarget(BaseModel):
    """Where notifications go (one entry of the ``notify_targets`` setting).

    Exactly one of ``url`` and ``url_file`` (a file holding the URL, such as a
    mounted Secret; read at each delivery, so a rotated Secret is picked up).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str | None = Field(default=None, repr=False, description="the webhook URL (a secret)")
    url_file: Path | None = Field(default=None, description="a file holding the webhook URL")
    format: Literal["slack", "generic"] = "generic"
    timeout: float = Field(default=5.0, gt=0, description="seconds per HTTP request")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers (not secret)"
    )

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _check_url(value)
            if problem is not None:
                raise ValueError(f"the URL {problem}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> NotifyTarget:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("set exactly one of url and url_file")
        return self

    def read_url(self, name: str) -> str:
        """The URL; ``NotifyError`` naming target ``name`` when its file cannot be used."""
        if self.url is not None:
            return self.url
        assert self.url_file is not None
        try:
            with self.url_file.open("rb") as handle:
                data = handle.read(MAX_URL_FILE_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise NotifyError(
                f"notification target {name!r}: cannot read url_file {str(self.url_file)!r}: "
                f"{reason}"
            ) from None
        if len(data) > MAX_URL_FILE_BYTES:
            raise NotifyError(f"notification target {name!r}: url_file is larger than 8 KiB")
        try:
            url = data.decode().strip()
        except UnicodeDecodeError:
            raise NotifyError(f"notification target {name!r}: url_file is not UTF-8") from None
        problem = _check_url(url) if url else "is empty"
        if problem is not None:
            raise NotifyError(f"notification target {name!r}: the URL in url_file {problem}")
        return url


NotifyTargetSettings = NotifyTarget  # the name the settings use


def check_targets(targets: Mapping[str, NotifyTarget]) -> list[str]:
    """A message per target whose URL cannot be read now (never the URL itself)."""
    problems = []
    for name, target in targets.items():
        try:
            target.read_url(name)
        except NotifyError as exc:
            problems.append(str(exc))
    return problems


@dataclass(frozen=True)
class _Delivery:
    target: str
    kind: NotificationKind
    run: Run
    tags: tuple[str, ...]

    @property
    def context(self) -> dict[str, str]:
        return {"workflow": f"{self.run.workspace}/{self.run.name}", "run": self.run.run_id}


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    detail: str  # "HTTP 503", "timed out"...: never the URL
    retry: bool = False
    wait: float | None = None  # from Retry-After


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new destination: the body never goes elsewhere."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class NotifierCounters:
    delivered: dict[tuple[str, str], int]
    failed: dict[tuple[str, str], int]
    retries: int
    dropped: int
    queued: int


class Notifier:
    """Queues notifications of finished runs and delivers them from one worker thread."""

    def __init__(
        self,
        targets: Mapping[str, NotifyTarget],
        *,
        clock: Clock,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff = DEFAULT_BACKOFF,
        redact: Callable[[str], str] = _identity,
        queue_limit: int = 1000,
        spread: Callable[[], float] = random.random,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self._targets = dict(targets)
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff
        self._redact = redact
        self._queue_limit = queue_limit
        self._spread = spread
        self._rules: tuple[NotificationRule, ...] = ()
        self._warned_unknown: set[str] = set()
        self._queue: deque[_Delivery] = deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._closing = False
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener(_NoRedirects())
        # counters for metrics; read them through counters() from another thread
        self.delivered: dict[tuple[str, str], int] = {}
        self.failed: dict[tuple[str, str], int] = {}
        self.retries = 0
        self.dropped = 0

    @property
    def target_names(self) -> list[str]:
        return sorted(self._targets)

    def set_rules(self, rules: Sequence[NotificationRule]) -> None:
        """The repository's rules, after each sync; unknown targets are warned of once each."""
        rules = tuple(rules)
        for name in unknown_targets(rules, self._targets):
            if name not in self._warned_unknown:
                self._warned_unknown.add(name)
                logger.warning(
                    "notification rules name target %r, which this daemon does not have "
                    "(notify_targets: %s); those notifications are not sent",
                    name,
                    ", ".join(self.target_names) or "none",
                )
        with self._cond:
            self._rules = rules

    def run_finished(self, run: Run, *, tags: Sequence[str], previous: Run | None) -> None:
        """Queue what ``run`` is news of; never blocks on the network, never raises."""
        try:
            kinds = kinds_for(run, previous)
            if not kinds:
                return
            with self._cond:
                rules = self._rules
            picks = select(rules, workspace=run.workspace, name=run.name, tags=tags, kinds=kinds)
            for target, kind in picks:
                if target in self._targets:
                    self._enqueue(_Delivery(target, kind, run, tuple(tags)))
        except Exception:
            logger.exception(
                "could not queue notifications",
                extra={"workflow": f"{run.workspace}/{run.name}", "run": run.run_id},
            )

    def _enqueue(self, delivery: _Delivery) -> None:
        dropped: _Delivery | None = None
        with self._cond:
            if self._closing:
                logger.warning(
                    "notification to target %r of %s not sent: the notifier is closed",
                    delivery.target,
                    delivery.kind,
                    extra=delivery.context,
                )
                return
            if len(self._queue) >= self._queue_limit:
                dropped = self._queue.popleft()
                self.dropped += 1
            self._queue.append(delivery)
            self._cond.notify_all()
        if dropped is not None:
            logger.warning(
                "notification queue is full (%d): dropped the oldest, to target %r of %s",
                self._queue_limit,
                dropped.target,
                dropped.kind,
                extra=dropped.context,
            )

    def counters(self) -> NotifierCounters:
        """A consistent copy of the counters, for metrics."""
        with self._cond:
            return NotifierCounters(
                delivered=dict(self.delivered),
                failed=dict(self.failed),
                retries=self.retries,
                dropped=self.dropped,
                queued=len(self._queue),
            )

    # ------------------------------------------------------------------ the worker

    def start(self) -> None:
        """Start the worker thread (once); warn of targets whose URL cannot be read now."""
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._work, name="notifier", daemon=True)
        for problem in check_targets(self._targets):
            logger.warning("%s", problem)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was delivered or given up; False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop (retries end too)."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock.monotonic() + timeout
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            logger.warning("%d notification(s) not sent before shutdown", left)

    def _past_deadline(self) -> bool:
        deadline = self._deadline
        return deadline is not None and self._clock.monotonic() >= deadline

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._past_deadline():
                    return
                delivery = self._queue.popleft()
                self._busy += 1
            try:
                self._deliver(delivery)
            except Exception as exc:  # a bug must not stop the worker; the URL is not in it
                logger.error(
                    "notification to target %r of %s failed: %s",
                    delivery.target,
                    delivery.kind,
                    type(exc).__name__,
                    extra=delivery.context,
                )
                self._count(self.failed, delivery)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _count(self, counter: dict[tuple[str, str], int], delivery: _Delivery) -> None:
        key = (delivery.target, delivery.kind)
        with self._cond:
            counter[key] = counter.get(key, 0) + 1

    def _deliver(self, delivery: _Delivery) -> None:
        target = self._targets[delivery.target]
        try:
            url = target.read_url(delivery.target)
        except NotifyError as exc:
            logger.error("%s", exc, extra=delivery.context)
            self._count(self.failed, delivery)
            return
        build = slack_payload if target.format == "slack" else generic_payload
        payload = build(
            delivery.run, delivery.kind, workflow_tags=delivery.tags, redact=self._redact
        )
        body = json.dumps(payload, ensure_ascii=False).encode()
        attempt = 0
        while True:
            outcome = self._post(url, body, target)
            if outcome.ok:
                self._count(self.delivered, delivery)
                logger.info(
                    "notified target %r of %s",
                    delivery.target,
                    delivery.kind,
                    extra=delivery.context,
                )
                return
            if (
                not outcome.retry
                or not self._backoff.should_retry(attempt)
                or self._past_deadline()
            ):
                logger.error(
                    "notification to target %r of %s failed: %s%s",
                    delivery.target,
                    delivery.kind,
                    outcome.detail,
                    f" (after {attempt + 1} tries)" if attempt else "",
                    extra=delivery.context,
                )
                self._count(self.failed, delivery)
                return
            delay = outcome.wait
            if delay is None:
                delay = self._backoff.delay(attempt, spread=self._spread())
            delay = min(delay, MAX_RETRY_AFTER)
            if self._deadline is not None:
                delay = max(0.0, min(delay, self._deadline - self._clock.monotonic()))
            logger.warning(
                "notification to target %r of %s failed: %s; retrying in %.1f s",
                delivery.target,
                delivery.kind,
                outcome.detail,
                delay,
                extra=delivery.context,
            )
            with self._cond:
                self.retries += 1
            self._sleep(delay)
            attempt += 1

    def _post(self, url: str, body: bytes, target: NotifyTarget) -> _Outcome:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            **target.headers,
        }
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=target.timeout) as response:
                response.read(65536)
                return _Outcome(True, f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            status, retry_after = exc.code, exc.headers.get("Retry-After")
            exc.close()
            if status == 429 or status >= 500:
                return _Outcome(False, f"HTTP {status}", True, self._retry_after(retry_after))
            if 300 <= status < 400:
                return _Outcome(False, f"HTTP {status} (redirects are not followed)")
            return _Outcome(False, f"HTTP {status}")
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            return _Outcome(False, _describe(exc, url), True)
        except ValueError:  # an unusable URL; its message would repeat it
            return _Outcome(False, "the URL is not usable")

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds from a Retry-After header (seconds, or an HTTP date); None when absent."""
        if value is None:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            return None
        return max(0.0, (moment - self._clock.now()).total_seconds())


def _describe(exc: BaseException, url: str) -> str:
    """What went wrong, without the URL (nor its path, where webhook secrets live)."""
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        text = "timed out"
    elif isinstance(reason, BaseException):
        message = getattr(reason, "strerror", None) or str(reason)
        text = f"{type(reason).__name__}: {message}" if message else type(reason).__name__
    else:
        text = str(reason)
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.netloc):
        if len(secret) > 1:
            text = text.replace(secret, "[url]")
    return text
