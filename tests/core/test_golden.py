"""Golden manifests: every valid one loads; every invalid one fails exactly as its header says.

Each invalid file starts with ``# expect: LINE:COL FIELD: message part``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.core.loading import load_manifest_file
from tests.conftest import EXAMPLES_REPO, GOLDEN

VARIABLES = {"SHARED_VOLUME_ID": "shared-volume"}
EXPECT = re.compile(r"^# expect: (\d+):(\d*) ?(\S*): (.+)$")


def _load(path: Path):  # type: ignore[no-untyped-def]
    return load_manifest_file(path.name, path.read_bytes(), workspace="public", variables=VARIABLES)


@pytest.mark.parametrize("path", sorted((GOLDEN / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_golden_manifest_loads(path: Path) -> None:
    result = _load(path)
    assert result.errors == ()
    assert result.workflows


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES_REPO / "workflows").glob("*.yaml")), ids=lambda p: p.stem
)
def test_seed_examples_load(path: Path) -> None:
    result = _load(path)
    assert [e.render() for e in result.errors] == []
    assert [w.manifest.name for w in result.workflows] == [path.stem]


@pytest.mark.parametrize("path", sorted((GOLDEN / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_golden_manifest_fails_where_expected(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    match = EXPECT.match(header)
    assert match, f"{path.name}: first line must be '# expect: LINE:COL FIELD: message'"
    line, column, field, message = match.groups()
    result = _load(path)
    assert result.workflows == ()
    rendered = [e.render() for e in result.errors]
    assert len(result.errors) == 1, rendered
    error = result.errors[0]
    assert error.line == int(line), rendered
    if column:
        assert error.column == int(column), rendered
    if field:
        assert (error.field or "<file>") == field, rendered
    assert message in error.message, rendered
    assert rendered[0].startswith(f"{path.name}:{line}:")
