"""The backends the contract suite runs on, built through one registry.

To add a backend, add a factory to ``FACTORIES`` and its ``Capabilities``
to ``CAPABILITIES`` under the same name (the name is the test id). A factory
gets the test's ``request`` (for its own fixtures, through
``request.getfixturevalue``) and a fresh directory, and registers its own
cleanup with ``request.addfinalizer``.

Where backends may legitimately differ, the difference is a capability and
the tests assert both branches. Where a backend does not (yet) keep the
port's documented contract, its entry in ``KNOWN_DEVIATIONS`` marks that
test ``xfail(strict=True)`` for that backend alone: it fails loudly once the
backend is fixed, so the entry is then removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.adapters.local.store import LocalStore
from reconciler.ports import RunBackend

BackendFactory = Callable[[pytest.FixtureRequest, Path], RunBackend]


@dataclass(frozen=True)
class Capabilities:
    """How a backend may legitimately differ from another."""

    # A deleted workflow stays as a tombstone: get_workflow returns it with state
    # "deleted", all_workflows(include_deleted=True) lists it. Without: both forget it.
    keeps_deleted: bool
    # Step process ids are remembered (save_run(pids=...), set_step_pid, step_pids).
    # Without: those writes are accepted and step_pids is always {}.
    tracks_pids: bool


class TickingClock:
    """A clock that moves one millisecond forward each time it is read.

    The local store stamps rows with its clock; a clock that stands still
    would make two writes look like one (and its workflows stamp stand still).
    """

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._current = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            self._current += timedelta(milliseconds=1)
            return self._current

    def monotonic(self) -> float:
        return (self.now() - datetime(2030, 1, 1, tzinfo=UTC)).total_seconds()


def _local(request: pytest.FixtureRequest, directory: Path) -> RunBackend:
    store = LocalStore(directory / "state", clock=TickingClock())
    request.addfinalizer(store.close)
    return store


def _kubernetes(request: pytest.FixtureRequest, directory: Path) -> RunBackend:
    """The Kubernetes backend over HTTP against the test API server (tests/kube)."""
    from reconciler.adapters.kubernetes.backend import KubernetesBackend
    from reconciler.adapters.kubernetes.client import KubeClient

    kube = request.getfixturevalue("kube")
    backend = KubernetesBackend(
        KubeClient(kube.api_client()),
        namespace="workflow-reconciler",
        owner="contract",
        clock=TickingClock(),
    )
    request.addfinalizer(backend.close)
    return backend


FACTORIES: dict[str, BackendFactory] = {"local": _local, "kubernetes": _kubernetes}

CAPABILITIES: dict[str, Capabilities] = {
    "local": Capabilities(keeps_deleted=True, tracks_pids=True),
    "kubernetes": Capabilities(keeps_deleted=False, tracks_pids=False),
}

# backend name -> {test function name: why it fails there}
KNOWN_DEVIATIONS: dict[str, dict[str, str]] = {}

assert FACTORIES.keys() == CAPABILITIES.keys(), "every backend needs its capabilities"


@pytest.fixture(params=sorted(FACTORIES))
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    reason = KNOWN_DEVIATIONS.get(name, {}).get(request.function.__name__)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{name}: {reason}"))
    return name


@pytest.fixture
def backend(backend_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> RunBackend:
    return FACTORIES[backend_name](request, tmp_path)


@pytest.fixture
def caps(backend_name: str) -> Capabilities:
    return CAPABILITIES[backend_name]
