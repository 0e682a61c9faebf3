"""Shared fixtures: paths to the project's example and golden manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Daemons the tests start serve HTTP on a free port, never on a fixed one (8080 may be taken,
# and two daemons of one test would collide). A test that wants a port sets its own.
os.environ.setdefault("RECONCILER_HTTP_ADDRESS", "127.0.0.1:0")

pytest_plugins = ["tests.sshservers", "tests.kube.fixtures"]  # sshd; the Kubernetes API server

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLES_REPO = PROJECT / "examples-repo"
GOLDEN = Path(__file__).resolve().parent / "core" / "golden"


@pytest.fixture
def examples_repo() -> Path:
    return EXAMPLES_REPO
