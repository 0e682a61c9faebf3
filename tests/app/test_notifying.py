"""Delivering notifications over real HTTP to a receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.app.notifying import (
    Notifier,
    NotifyError,
    NotifyTarget,
    check_targets,
)
from reconciler.core.backoffs import Backoff
from reconciler.core.names import Revision, RunId
from reconciler.core.notifications import NotificationRule
from reconciler.core.redaction import MASK, Redactor
from reconciler.core.runs import (
    Run,
    new_run,
    request_cancel,
    skipped_run,
    start_run,
    step_finished,
    step_started,
)

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
SPEC = {"spec": {"dag": [{"name": "extract", "depends": []}]}}
SECRET_PATH = "/services/T0000/B0000/s3cr3tW3bh00kT0k3n"
NO_BACKOFF = Backoff(base=0.01, cap=0.01, jitter=0.0, attempts=4)


class FakeClock:
    def __init__(self) -> None:
        self.tick = 0.0

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.tick)

    def monotonic(self) -> float:
        return self.tick


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # hold the request until the test ends


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    """An HTTP server that records POSTs and answers from a script, then 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    answer = receiver.script.pop(0) if receiver.script else Answer()
                if answer.hang:
                    receiver.release.wait(10)
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base + SECRET_PATH

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = Receiver()
    yield server
    server.close()


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_run(run_id: str = "daily-report-1", *, code: int = 1, reason: str = "") -> Run:
    run = new_run(
        workspace="public",
        run_id=RunId(run_id),
        name="daily-report",
        trigger="schedule",
        requested_by="scheduler",
        revision=Revision("0123456789abcdef"),
        spec=SPEC,
        spec_hash="h",
        now=T0,
        slot=T0,
    )
    run = step_started(start_run(run, now=T0), "extract", now=T0)
    return step_finished(
        run, "extract", exit_code=code, now=T0 + timedelta(seconds=5), reason=reason
    )


def rules(*entries: dict[str, Any]) -> list[NotificationRule]:
    return [NotificationRule.model_validate({"target": "hook", **entry}) for entry in entries]


def notifier(
    receiver: Receiver,
    *,
    fmt: str = "generic",
    timeout: float = 5.0,
    sleep: Sleeps | None = None,
    url: str | None = None,
    **options: Any,
) -> Notifier:
    target = NotifyTarget(url=url or receiver.url, format=fmt, timeout=timeout)
    options.setdefault("backoff", NO_BACKOFF)
    return Notifier({"hook": target}, clock=FakeClock(), sleep=sleep or Sleeps(), **options)


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="reconciler.app.notifying")
    return caplog


def assert_no_url_in_logs(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for record in caplog.records:
        seen = record.getMessage() + repr(record.__dict__)
        for secret in (SECRET_PATH, "s3cr3tW3bh00kT0k3n", *secrets):
            assert secret not in seen


# --------------------------------------------------------------------------- what is sent


def test_a_failure_is_notified_with_the_generic_payload(
    receiver: Receiver, caught: pytest.LogCaptureFixture
) -> None:
    n = notifier(receiver)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=["critical"], previous=None)
    assert n.flush(10)
    n.close(5)
    (request,) = receiver.received
    assert request.path == SECRET_PATH
    assert request.headers["Content-Type"].startswith("application/json")
    body = request.body
    assert (body["kind"], body["workflow"], body["state"]) == ("failure", "daily-report", "failed")
    assert body["tags"] == ["critical"]
    assert body["steps"][0]["exit_code"] == 1
    assert n.delivered == {("hook", "failure"): 1}
    assert n.failed == {}
    assert n.retries == 0
    assert any(r.__dict__.get("workflow") == "public/daily-report" for r in caught.records)
    assert any(r.__dict__.get("run") == "daily-report-1" for r in caught.records)
    assert_no_url_in_logs(caught)


def test_success_only_when_asked_and_recovery_after_a_failure(receiver: Receiver) -> None:
    n = notifier(receiver)
    n.set_rules(rules({}))
    n.start()
    failure = make_run("a", code=1)
    n.run_finished(make_run("z", code=0), tags=[], previous=None)  # success: not asked
    assert n.flush(10)
    assert receiver.received == []
    n.set_rules(rules({"on": ["success", "recovery"]}))
    n.run_finished(make_run("b", code=0), tags=[], previous=failure)
    n.run_finished(make_run("c", code=0), tags=[], previous=make_run("b", code=0))
    assert n.flush(10)
    n.close(5)
    assert [(r.body["run_id"], r.body["kind"]) for r in receiver.received] == [
        ("b", "recovery"),
        ("c", "success"),
    ]


def test_cancelled_and_skipped_runs_notify_nothing(receiver: Receiver) -> None:
    n = notifier(receiver)
    n.set_rules(rules({"on": ["failure", "success", "recovery"]}))
    n.start()
    pending = new_run(
        workspace="public",
        run_id=RunId("p"),
        name="daily-report",
        trigger="manual",
        requested_by="me",
        revision=Revision("r"),
        spec=SPEC,
        spec_hash="h",
        now=T0,
    )
    n.run_finished(request_cancel(pending, now=T0, reason="x"), tags=[], previous=None)
    n.run_finished(skipped_run(pending, reason="Forbid"), tags=[], previous=make_run("a"))
    assert n.flush(10)
    n.close(5)
    assert receiver.received == []


def test_selection_by_glob_workspace_glob_and_tag(receiver: Receiver) -> None:
    targets = {
        name: NotifyTarget(url=f"{receiver.base}/{name}")
        for name in ("by-name", "by-key", "by-tag", "other")
    }
    n = Notifier(targets, clock=FakeClock(), sleep=Sleeps(), backoff=NO_BACKOFF)
    n.set_rules(
        [
            NotificationRule(target="by-name", workflows=("daily-*",)),
            NotificationRule(target="by-key", workflows=("public/daily-*",)),
            NotificationRule(target="by-tag", tags=("critical",)),
            NotificationRule(target="other", workflows=("finance/*", "weekly")),
        ]
    )
    n.start()
    n.run_finished(make_run(), tags=["critical"], previous=None)
    assert n.flush(10)
    n.close(5)
    assert sorted(r.path for r in receiver.received) == ["/by-key", "/by-name", "/by-tag"]


def test_slack_format(receiver: Receiver) -> None:
    n = notifier(receiver, fmt="slack")
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    (request,) = receiver.received
    assert set(request.body) == {"text", "blocks"}
    assert request.body["blocks"][0]["type"] == "header"
    assert "daily-report failed" in request.body["text"]


def test_a_secret_looking_reason_is_redacted(receiver: Receiver) -> None:
    token = "ghp_" + "a1B2" * 10
    n = notifier(receiver, fmt="slack", redact=Redactor(["hunter2-value"]))
    n.set_rules(rules({}))
    n.start()
    n.run_finished(
        make_run(reason=f"login failed with {token} and hunter2-value"), tags=[], previous=None
    )
    assert n.flush(10)
    n.close(5)
    (request,) = receiver.received
    text = json.dumps(request.body)
    assert token not in text
    assert "hunter2-value" not in text
    assert MASK in text


# --------------------------------------------------------------------------- retries


def test_retry_on_500_then_success(receiver: Receiver, caught: pytest.LogCaptureFixture) -> None:
    receiver.script = [Answer(500), Answer(503)]
    sleeps = Sleeps()
    n = notifier(receiver, sleep=sleeps)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert len(receiver.received) == 3
    assert n.delivered == {("hook", "failure"): 1}
    assert n.retries == 2
    assert len(sleeps.calls) == 2
    assert_no_url_in_logs(caught)


def test_429_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.script = [Answer(429, {"Retry-After": "7"})]
    sleeps = Sleeps()
    n = notifier(receiver, sleep=sleeps)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert sleeps.calls == [7.0]
    assert len(receiver.received) == 2
    assert n.delivered == {("hook", "failure"): 1}


def test_no_retry_on_400_and_the_url_is_never_logged(
    receiver: Receiver, caught: pytest.LogCaptureFixture
) -> None:
    receiver.script = [Answer(400)]
    sleeps = Sleeps()
    n = notifier(receiver, sleep=sleeps)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert len(receiver.received) == 1
    assert sleeps.calls == []
    assert n.failed == {("hook", "failure"): 1}
    assert n.delivered == {}
    errors = [r for r in caught.records if r.levelno >= logging.ERROR]
    assert errors
    assert "'hook'" in errors[0].getMessage()
    assert "HTTP 400" in errors[0].getMessage()
    assert_no_url_in_logs(caught)


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.script = [Answer(307, {"Location": receiver.base + "/elsewhere"})]
    n = notifier(receiver)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert [r.path for r in receiver.received] == [SECRET_PATH]
    assert n.failed == {("hook", "failure"): 1}


def test_an_unreachable_target_is_retried_then_failed_without_its_url(
    receiver: Receiver, caught: pytest.LogCaptureFixture
) -> None:
    port = receiver.server.server_address[1]
    receiver.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}{SECRET_PATH}"
    sleeps = Sleeps()
    n = notifier(receiver, url=url, sleep=sleeps)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert n.failed == {("hook", "failure"): 1}
    assert n.retries == NO_BACKOFF.attempts - 1
    assert len(sleeps.calls) == NO_BACKOFF.attempts - 1
    assert any(r.levelno >= logging.ERROR for r in caught.records)
    assert_no_url_in_logs(caught, url)


def test_a_hanging_receiver_does_not_block_run_finished(receiver: Receiver) -> None:
    receiver.script = [Answer(hang=True), Answer(hang=True)]
    n = notifier(receiver, timeout=0.2, backoff=Backoff(base=0.01, jitter=0.0, attempts=2))
    n.set_rules(rules({}))
    n.start()
    began = time.monotonic()
    for number in range(5):
        n.run_finished(make_run(f"r{number}"), tags=[], previous=None)
    assert time.monotonic() - began < 2.0  # sanity only: queued, not sent
    assert n.flush(10)
    n.close(5)
    assert n.failed == {("hook", "failure"): 1}
    assert n.delivered == {("hook", "failure"): 4}


# --------------------------------------------------------------------------- the queue


def test_a_full_queue_drops_the_oldest(
    receiver: Receiver, caught: pytest.LogCaptureFixture
) -> None:
    n = notifier(receiver, queue_limit=2)
    n.set_rules(rules({}))
    for number in range(3):  # not started: everything waits in the queue
        n.run_finished(make_run(f"r{number}"), tags=[], previous=None)
    assert n.dropped == 1
    assert n.counters().queued == 2
    assert any("queue is full" in r.getMessage() for r in caught.records)
    n.start()
    assert n.flush(10)
    n.close(5)
    assert [r.body["run_id"] for r in receiver.received] == ["r1", "r2"]


def test_close_stops_the_worker_and_later_runs_are_not_queued(receiver: Receiver) -> None:
    n = notifier(receiver)
    n.set_rules(rules({}))
    n.start()
    n.close(5)
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.counters().queued == 0
    assert receiver.received == []


def test_unknown_targets_are_warned_of_once(
    receiver: Receiver, caught: pytest.LogCaptureFixture
) -> None:
    n = notifier(receiver)
    for _ in range(3):
        n.set_rules([*rules({}), NotificationRule(target="pager")])
    warnings = [r for r in caught.records if "'pager'" in r.getMessage()]
    assert len(warnings) == 1
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert [r.path for r in receiver.received] == [SECRET_PATH]


# --------------------------------------------------------------------------- targets


def test_url_file_is_read(receiver: Receiver, tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(receiver.url + "\n")
    target = NotifyTarget(url_file=secret, format="slack")
    n = Notifier({"hook": target}, clock=FakeClock(), sleep=Sleeps(), backoff=NO_BACKOFF)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert [r.path for r in receiver.received] == [SECRET_PATH]


def test_an_unreadable_url_file_names_the_target(
    receiver: Receiver, tmp_path: Path, caught: pytest.LogCaptureFixture
) -> None:
    target = NotifyTarget(url_file=tmp_path / "missing")
    with pytest.raises(NotifyError, match="notification target 'hook': cannot read url_file"):
        target.read_url("hook")
    (problem,) = check_targets({"hook": target})
    assert "'hook'" in problem
    bad = tmp_path / "bad"
    bad.write_text("ftp://example.invalid/x\n")
    with pytest.raises(NotifyError, match="'hook': the URL in url_file must be an http"):
        NotifyTarget(url_file=bad).read_url("hook")

    n = Notifier({"hook": target}, clock=FakeClock(), sleep=Sleeps(), backoff=NO_BACKOFF)
    n.set_rules(rules({}))
    n.start()
    n.run_finished(make_run(), tags=[], previous=None)
    assert n.flush(10)
    n.close(5)
    assert n.failed == {("hook", "failure"): 1}
    assert any("'hook'" in r.getMessage() and "url_file" in r.getMessage() for r in caught.records)


def test_target_settings_are_checked_without_repeating_the_url() -> None:
    with pytest.raises(ValidationError, match="exactly one of url and url_file"):
        NotifyTarget()
    with pytest.raises(ValidationError, match="exactly one of url and url_file"):
        NotifyTarget(url="https://example.invalid/x", url_file=Path("/x"))
    with pytest.raises(ValidationError) as info:
        NotifyTarget(url="ftp://example.invalid/s3cr3tW3bh00kT0k3n")
    assert "s3cr3tW3bh00kT0k3n" not in str(info.value)
    with pytest.raises(ValidationError):
        NotifyTarget(url="https://example.invalid/x", timeout=0)
    target = NotifyTarget(url="https://example.invalid/s3cr3tW3bh00kT0k3n")
    assert "s3cr3tW3bh00kT0k3n" not in repr(target)
    assert target.format == "generic"
    assert target.timeout == 5.0
