"""Liveness and readiness over HTTP, for Kubernetes probes.

``/healthz`` answers 200 while the daemon's loops are alive: the sync loop
finished a pass (or is waiting to lead) within ``stale_after`` seconds.
``/readyz`` answers 200 once the daemon is ready for its role: a leader
after its first pass, a standby as soon as it waits for the Lease (a
standby is healthy; it just does not work). Both bodies are JSON saying
why, so ``kubectl describe`` shows the reason of a failing probe.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Health:
    """What the probes report; the daemon updates it as it goes."""

    monotonic: Callable[[], float]
    stale_after: float = 300.0
    role: str = "starting"  # starting, standby, leader, stopping
    passes: int = 0
    last_beat: float = field(default=0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def beat(self, *, passes: int | None = None) -> None:
        with self._lock:
            self.last_beat = self.monotonic()
            if passes is not None:
                self.passes = passes

    def set_role(self, role: str) -> None:
        with self._lock:
            self.role = role
            self.last_beat = self.monotonic()

    def live(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = self.monotonic() - self.last_beat
            ok = self.role in ("starting", "standby", "stopping") or age < self.stale_after
            return ok, {"role": self.role, "seconds_since_beat": round(age, 1)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            ok = self.role == "standby" or (self.role == "leader" and self.passes > 0)
            return ok, {"role": self.role, "passes": self.passes}


class HealthServer:
    def __init__(self, address: str, health: Health) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"http_address {address!r}: expected host:port, e.g. 0.0.0.0:8080")
        self.health = health
        handler = _handler(health)
        self.server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("serving /healthz and /readyz on port %d", self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, body = health.live()
            elif self.path == "/readyz":
                ok, body = health.ready()
            else:
                self.send_error(404, "not found: try /healthz or /readyz")
                return
            data = json.dumps({"ok": ok, **body}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
