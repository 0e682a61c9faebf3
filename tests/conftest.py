"""Shared fixtures: paths to the project's example and golden manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.sshservers", "tests.kube.fixtures"]  # sshd; the Kubernetes API server

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLES_REPO = PROJECT / "examples-repo"
GOLDEN = Path(__file__).resolve().parent / "core" / "golden"


@pytest.fixture
def examples_repo() -> Path:
    return EXAMPLES_REPO
