"""The daemon's HTTP server: probes, Prometheus metrics and push webhooks, on one port.

- ``GET /healthz``: 200 while the loop is alive: a pass finished within
  ``stale_after`` seconds (a multiple of the interval), or the replica is a
  standby waiting for the Lease. 503 when the loop is stuck.
- ``GET /readyz``: 200 when the source was reachable and the last sync
  succeeded, or for a healthy standby; 503 otherwise. Both answer JSON that
  says why, so ``kubectl describe pod`` shows the reason.
- ``GET /metrics``: the Prometheus text format.
- ``POST /hooks/github``, ``/hooks/gitlab``, ``/hooks/generic``: see
  ``webhooks.py``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler.app.api import RunsApi
from reconciler.app.metrics import PrometheusRecorder
from reconciler.app.webhooks import Webhooks

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Health:
    """What the probes report; the daemon updates it as it goes."""

    monotonic: Callable[[], float]
    stale_after: float = 300.0
    role: str = "starting"  # starting, standby, leader, stopping
    passes: int = 0
    last_beat: float = field(default=0.0)
    last_result: str | None = None  # of the last pass that did more than find no change
    source_ok: bool = True
    source_message: str = ""
    message: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def beat(self, *, passes: int | None = None) -> None:
        with self._lock:
            self.last_beat = self.monotonic()
            if passes is not None:
                self.passes = passes

    def record(self, result: str, *, source_ok: bool, message: str = "") -> None:
        """A pass ended: its result (``unchanged``, or an unreachable source, keeps the last
        real one)."""
        with self._lock:
            self.last_beat = self.monotonic()
            self.passes += 1
            self.source_ok = source_ok
            if not source_ok:  # says nothing of the sync itself: the last one still stands
                self.source_message = message
            elif result != "unchanged":
                self.last_result = result
                self.message = message

    def set_role(self, role: str) -> None:
        with self._lock:
            self.role = role
            self.last_beat = self.monotonic()

    def live(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = self.monotonic() - self.last_beat
            waiting = self.role in ("starting", "standby", "stopping")
            ok = waiting or age < self.stale_after
            body: dict[str, Any] = {"role": self.role, "seconds_since_pass": round(age, 1)}
            if not ok:
                body["reason"] = f"no pass finished for {age:.0f} s (limit {self.stale_after:g})"
            return ok, body

    def ready(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            body: dict[str, Any] = {
                "role": self.role,
                "passes": self.passes,
                "last_sync": self.last_result,
            }
            if self.role == "standby":
                return True, body
            if self.role != "leader" or self.passes == 0:
                return False, {**body, "reason": "no pass yet"}
            if not self.source_ok:
                reason = f"the source is unreachable: {self.source_message}"
                return False, {**body, "reason": reason}
            if self.last_result not in ("succeeded", None):
                reason = f"the last sync {self.last_result}: {self.message}".rstrip(": ")
                return False, {**body, "reason": reason}
            return True, body


class DaemonServer:
    """A threading HTTP server; every route answers fast (webhooks only poke the loop)."""

    def __init__(
        self,
        address: str,
        health: Health,
        *,
        recorder: PrometheusRecorder | None = None,
        webhooks: Webhooks | None = None,
        api: RunsApi | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"http_address {address!r}: expected host:port, e.g. 127.0.0.1:8080")
        self.health = health
        handler = _handler(health, recorder, webhooks, api)
        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("serving probes, /metrics and webhooks on port %d", self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(
    health: Health,
    recorder: PrometheusRecorder | None,
    webhooks: Webhooks | None,
    api: RunsApi | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "reconciler"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/api/"):
                self._api("GET")
            elif path == "/healthz":
                ok, body = health.live()
                self._json(200 if ok else 503, {"ok": ok, **body})
            elif path == "/readyz":
                ok, body = health.ready()
                self._json(200 if ok else 503, {"ok": ok, **body})
            elif path == "/metrics" and recorder is not None:
                data = recorder.exposition()
                self.send_response(200)
                self.send_header("Content-Type", PROMETHEUS_TEXT)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._json(404, {"error": "not found: try /healthz, /readyz or /metrics"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/api/"):
                self._api("POST")
                return
            source = path.removeprefix("/hooks/")
            if webhooks is None or not path.startswith("/hooks/") or "/" in source:
                self._json(404, {"error": "not found: POST /hooks/github|gitlab|generic"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = webhooks.handle(source, headers, self.rfile.read)
            if answer.status == 413:
                self.close_connection = True  # the rest of the body is never read
            self._json(answer.status, answer.body)

        def _api(self, method: str) -> None:
            if api is None:
                self._json(404, {"error": "the API is off: list `users` in the settings"})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            if 0 < length <= 65536:
                self.rfile.read(length)  # requests carry no body we use
            reply = api.handle(method, self.path, headers)
            if reply.text is None:
                self._json(reply.status, reply.body)
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(reply.text)))
            self.end_headers()
            self.wfile.write(reply.text)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
