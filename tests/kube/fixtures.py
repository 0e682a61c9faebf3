"""Pytest fixtures for the local Kubernetes API server (tests/kube/emulator.py).

``kube``: a started ``KubeEmulator`` (built-in resources, and the project's CRDs from
``deploy/crds/*.yaml`` when there are any), stopped at teardown; the teardown fails the test
when the server hit an unexpected error (an emulator bug, or a ``job_outcome`` that raised).
``kube_api``: an official ``kubernetes.client.ApiClient`` for it.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest

from tests.kube.emulator import KubeEmulator

PROJECT = Path(__file__).resolve().parents[2]
PROJECT_CRDS = PROJECT / "deploy" / "crds"


def project_crd_files() -> list[Path]:
    if not PROJECT_CRDS.is_dir():
        return []
    return sorted([*PROJECT_CRDS.glob("*.yaml"), *PROJECT_CRDS.glob("*.yml")])


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.load_crds(project_crd_files())
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
    errors = emulator.internal_errors
    if errors:
        details = "\n".join("".join(traceback.format_exception(e)) for e in errors)
        pytest.fail(f"the Kubernetes emulator hit {len(errors)} unexpected error(s):\n{details}")


@pytest.fixture
def kube_api(kube: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    api = kube.api_client()
    try:
        yield api
    finally:
        api.close()
