"""DesiredWorkflow keeps its spec as JSON text; what it decodes must be what was normalized."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from bench.generate import manifests, scheduled_manifests
from reconciler.core.loading import load_manifest_file
from reconciler.core.manifests import normalized_spec, normalized_spec_json
from reconciler.core.names import WorkflowKey
from reconciler.core.workflows import DesiredWorkflow, spec_hash
from tests.conftest import EXAMPLES_REPO, GOLDEN


def loaded_manifests():  # type: ignore[no-untyped-def]
    files = {p.name: p.read_bytes() for p in (EXAMPLES_REPO / "workflows").glob("*.yaml")}
    files |= {p.name: p.read_bytes() for p in (GOLDEN / "valid").glob("*.yaml")}
    files |= manifests(20) | scheduled_manifests(5)
    variables = {"SHARED_VOLUME_ID": "shared-volume"}
    for path, data in sorted(files.items()):
        yield from load_manifest_file(path, data, workspace="public", variables=variables).workflows


def test_pydantic_json_equals_the_normalized_data() -> None:
    seen = 0
    for loaded in loaded_manifests():
        spec = normalized_spec(loaded.manifest)
        text = normalized_spec_json(loaded.manifest)
        assert json.loads(text) == spec
        assert list(json.loads(text)) == list(spec)  # the manifest's order, as plans show it
        desired = DesiredWorkflow.from_manifest(loaded.manifest, workspace="public", path="p")
        assert desired.spec == spec
        assert desired.spec_hash == spec_hash(spec)
        seen += 1
    assert seen > 25


def test_from_spec_hashes_the_canonical_json_and_accepts_read_only_mappings() -> None:
    spec = {"b": 1, "a": MappingProxyType({"y": [1, 2], "x": None})}
    desired = DesiredWorkflow.from_spec(
        key=WorkflowKey("public/x"), workspace="public", name="x", path="x.yaml", spec=spec
    )
    assert desired.spec == {"b": 1, "a": {"y": [1, 2], "x": None}}
    assert desired.spec_hash == spec_hash({"a": {"x": None, "y": [1, 2]}, "b": 1})
    assert desired.spec is not desired.spec  # a new copy each time: callers may change it
    with pytest.raises(TypeError, match="set"):
        DesiredWorkflow.from_spec(
            key=WorkflowKey("public/x"), workspace="public", name="x", path="x", spec={"a": {1}}
        )
