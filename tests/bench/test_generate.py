"""The benchmark workloads stay valid manifests."""

from __future__ import annotations

from bench.generate import manifests
from reconciler.core.loading import load_manifest_set
from reconciler.core.repoconfigs import RepoConfig


def test_generated_manifests_are_valid_and_distinct() -> None:
    files = manifests(50, seed=3)
    result = load_manifest_set(files, config=RepoConfig(), variables={})
    assert [p.render() for p in result.errors] == []
    assert len(result.workflows) == 50
