"""Hostile input to the manifest loader and the repo config loader: fuzzed with hypothesis
(and atheris, when it is installed).

Whatever the bytes, ``load_manifest_file`` and ``load_repo_config`` must return problems,
never raise; never hang (a per-example deadline, and pytest-timeout); and every problem
must carry a position, ``FILE:LINE`` with ``line >= 1``. What does load must be safe to
use: names and volume ids are RFC 1123 labels (no path can be built from them),
directories are absolute and normalized, no text holds a NUL, and every template is one
of the two documented projections with a declared secret alias.

Bounded for CI (a few hundred examples per strategy); ``RECONCILER_SOAK=1`` runs many
more, with fresh random seeds, and atheris for minutes instead of seconds.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import posixpath
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core import yamldocs
from reconciler.core.loading import FileLoad, load_manifest_file, load_repo_config
from reconciler.core.manifests import Workflow
from reconciler.core.problems import Problem
from reconciler.core.repoconfigs import CONFIG_FILE, RepoConfig
from reconciler.core.templates import DefaultRef, SecretRef, parse_template
from tests.conftest import EXAMPLES_REPO
from tests.reliability.conftest import report

SOAK = os.environ.get("RECONCILER_SOAK") == "1"
SCALE = 20 if SOAK else 1
PATH = "workflows/fuzz.yaml"
# far above the slowest honest file (and a bomb just under the expansion limit, ~3 s): a
# hang trips it
SECONDS_PER_EXAMPLE = 10.0

EXAMPLE_FILES = sorted((EXAMPLES_REPO / "workflows").glob("*.yaml"))
EXAMPLE_BYTES = {path.name: path.read_bytes() for path in EXAMPLE_FILES}
EXAMPLE_DATA = {name: yaml.safe_load(data) for name, data in EXAMPLE_BYTES.items()}
CONFIG_BYTES = (EXAMPLES_REPO / CONFIG_FILE).read_bytes()
CONFIG_DATA = yaml.safe_load(CONFIG_BYTES)
_config, _config_problems = load_repo_config(CONFIG_BYTES)
assert not _config_problems, _config_problems
VARIABLES = dict(_config.variables)

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

CASES: Counter[str] = Counter()

pytestmark = pytest.mark.timeout(300 if SOAK else 120)


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings of one strategy: bounded in CI, wide in a soak."""
    return settings(
        max_examples=examples * SCALE,
        deadline=timedelta(seconds=SECONDS_PER_EXAMPLE),
        database=None,  # nothing written into the project
        derandomize=not SOAK,  # CI: the same examples on every run; soak: new ones
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def print_case_counts(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    lines = [f"  {name}: {count}" for name, count in sorted(CASES.items())]
    text = f"\nfuzz cases run: {sum(CASES.values())}\n" + "\n".join(lines)
    if capture is None:  # pragma: no cover - capture disabled with -s
        print(text)
        return
    with capture.global_and_fixture_disabled():
        print(text)
    report("fuzz", {"cases run": sum(CASES.values()), "per strategy": dict(CASES)})


# -- the invariants ----------------------------------------------------------------------


def check_problems(problems: tuple[Problem, ...], path: str) -> None:
    for problem in problems:
        assert problem.path == path
        assert problem.line is not None, problem
        assert problem.line >= 1, problem
        assert problem.column is None or problem.column >= 1, problem
        assert problem.message, problem
        rendered = problem.render()
        assert rendered.startswith(f"{path}:{problem.line}"), rendered
        rendered.encode("utf-8")  # printable, and committable to the status branch
        json.dumps(problem.as_dict())


def check_workflow_is_safe(manifest: Workflow) -> None:
    """What loaded may become paths, argv, environments and Kubernetes names."""
    assert _LABEL.fullmatch(manifest.name), manifest.name
    data = manifest.model_dump(by_alias=True)
    spec = data["spec"]
    aliases = _aliases(spec.get("use"))
    _check_projection(spec.get("use"), aliases)
    for step in spec["dag"]:
        assert _LABEL.fullmatch(step["name"]), step["name"]
        use = (step.get("spec") or {}).get("use") or {}
        for volume in use.get("volumes") or ():
            assert _LABEL.fullmatch(volume["id"]), volume
            directory = volume["directory"]
            assert directory.startswith("/"), volume
            assert posixpath.normpath(directory) == directory, volume
            assert ".." not in directory.split("/"), volume
        _check_projection(use, aliases | _aliases(use))
    assert "\0" not in json.dumps(data, ensure_ascii=False), "a NUL loaded"


def _aliases(use: dict[str, Any] | None) -> set[str]:
    secrets = ((use or {}).get("projection") or {}).get("secrets") or ()
    for secret in secrets:
        assert _LABEL.fullmatch(secret["id"]), secret
    return {s.get("contextAlias") or s["id"].replace("-", "_") for s in secrets}


def _check_projection(use: dict[str, Any] | None, aliases: set[str]) -> None:
    projections = ((use or {}).get("projection") or {}).get("projections") or {}
    for variable in projections.get("envVars") or ():
        assert _IDENTIFIER.fullmatch(variable["key"]), variable
        for part in parse_template(variable["value"]):
            if isinstance(part.ref, SecretRef):
                assert part.ref.alias in aliases, variable
            else:
                assert part.ref is None or isinstance(part.ref, DefaultRef), variable
                assert part.ref is not None or "{{" not in part.text, variable


def check_manifest(
    data: bytes, case: str, *, max_bytes: int = 1 << 20, variables: dict[str, str] | None = None
) -> FileLoad:
    """Load data as a manifest file and check every invariant; the load."""
    CASES[case] += 1
    started = time.monotonic()
    load = load_manifest_file(
        PATH,
        data,
        workspace="public",
        variables=VARIABLES if variables is None else variables,
        max_bytes=max_bytes,
    )
    assert time.monotonic() - started < SECONDS_PER_EXAMPLE
    assert isinstance(load, FileLoad)
    check_problems(load.errors, PATH)
    check_problems(load.notes, PATH)
    for loaded in load.workflows:
        assert loaded.path == PATH
        assert loaded.line >= 1
        check_workflow_is_safe(loaded.manifest)
    return load


def check_config(data: bytes | None, case: str) -> tuple[RepoConfig, tuple[Problem, ...]]:
    CASES[case] += 1
    started = time.monotonic()
    config, problems = load_repo_config(data)
    assert time.monotonic() - started < SECONDS_PER_EXAMPLE
    assert isinstance(config, RepoConfig)
    check_problems(problems, CONFIG_FILE)
    if not problems:
        assert _LABEL.fullmatch(config.workspaces.default)
        for workspace in config.workspaces.paths.values():
            assert _LABEL.fullmatch(workspace), workspace
        for name in config.variables:
            assert _IDENTIFIER.fullmatch(name), name
        for relpath in ("workflows/a.yaml", "a.yaml", "x/y/z.yml"):
            assert _LABEL.fullmatch(config.workspaces.workspace_for(relpath))
    return config, problems


@contextmanager
def pure_python_loader() -> Iterator[None]:
    """The fallback loader (no libyaml): what runs where PyYAML was built without it."""
    saved = yamldocs._LOADER
    yamldocs._LOADER = yaml.SafeLoader
    try:
        yield
    finally:
        yamldocs._LOADER = saved


# -- values to put where they do not belong ----------------------------------------------

HOSTILE_NAMES = [
    "../../etc",
    "..",
    ".",
    "/etc/passwd",
    "/",
    "a/../../b",
    "vol/..",
    "..%2f..%2fetc",
    "vol\0",
    "\0",
    "vol\n",
    "vol\r\n",
    " vol",
    "~root",
    "C:\\Windows",
    "\\\\server\\share",
    "ｅｔｃ",  # full-width letters
    "vol\u202e",  # right-to-left override
    "a" * 64,
    "a" * 10_000,
    "",
    "-vol",
    "vol-",
    "VOL",
    "$(reboot)",
    "`id`",
    "vol;rm -rf /",
    "${HOME}",
    "{{.Env.HOME}}",
]
HOSTILE_TEMPLATES = [
    "{{.Env.HOME}}",
    "{{ .Env.PATH }}",
    '{{printf "%s" .}}',
    "{{printf `%s` .secrets}}",
    "{{ .secrets.app.API_TOKEN | b64enc }}",
    "{{- .secrets.app.API_TOKEN -}}",
    "{{/* comment */}}",
    '{{template "x"}}',
    "{{.}}",
    "{{.secrets}}",
    "{{.secrets.app}}",
    "{{.secrets.other.KEY}}",
    "{{.secrets.app.API_TOKEN.more}}",
    "{{.secrets.app.../../etc}}",
    "{{.defaultProjections}}",
    "{{.defaultProjections.__class__}}",
    "{{.defaultProjections.constructor}}",
    "{{.defaultProjections.dataOsRunId.x}}",
    "{{.DefaultProjections.runId}}",
    "{{{{.secrets.app.API_TOKEN}}}}",
    "{{ {{.defaultProjections.runId}} }}",
    "{{.defaultProjections.runId}",
    "{.defaultProjections.runId}}",
    "{{",
    "}}",
    "{{}}",
    "{{ }}",
    "{{\n.secrets.app.API_TOKEN\n}}",
    "{{.secrets.app.API_TOKEN}}{{",
    "prefix {{.secrets.app.API_TOKEN}} {{.defaultProjections.workspace}} suffix",
    "$(cat /etc/shadow)",
    "${HOME}",
    "$${HOME}",
    "${{name}}",
]
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**4000), max_value=10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=40),
    st.sampled_from(HOSTILE_NAMES),
    st.sampled_from(HOSTILE_TEMPLATES),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=16),  # dumped as !!binary: a tag the loader refuses
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def all_locs(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    locs = [loc]
    if isinstance(data, dict):
        for key, value in data.items():
            locs.extend(all_locs(value, (*loc, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            locs.extend(all_locs(value, (*loc, index)))
    return locs


def get_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        data = data[part]
    return data


def set_at(data: Any, loc: tuple[Any, ...], value: Any) -> Any:
    if not loc:
        return value
    get_at(data, loc[:-1])[loc[-1]] = value
    return data


def dump(data: Any, draw: st.DrawFn) -> bytes:
    flow = draw(st.sampled_from([False, None, True]))
    text = yaml.safe_dump(
        data, allow_unicode=draw(st.booleans()), default_flow_style=flow, sort_keys=False
    )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated_examples(draw: st.DrawFn) -> bytes:
    """An example manifest with 1-4 values replaced, removed or added, of any type."""
    data = copy.deepcopy(EXAMPLE_DATA[draw(st.sampled_from(sorted(EXAMPLE_DATA)))])
    for _ in range(draw(st.integers(1, 4))):
        loc = draw(st.sampled_from(all_locs(data)))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        parent = get_at(data, loc[:-1]) if loc else None
        if action == "delete" and loc and isinstance(parent, dict | list):
            del parent[loc[-1]]
        elif action == "add" and isinstance(get_at(data, loc), dict):
            key = draw(st.one_of(st.text(max_size=12), st.sampled_from(["spec", "<<", "true"])))
            get_at(data, loc)[key] = draw(VALUES)
        else:
            data = set_at(data, loc, draw(VALUES))
    return dump(data, draw)


@st.composite
def placed(draw: st.DrawFn, where: str, values: st.SearchStrategy[Any]) -> bytes:
    """An example manifest with a hostile value at one of the places named ``where``."""
    candidates = [
        (name, loc)
        for name, data in sorted(EXAMPLE_DATA.items())
        for loc in all_locs(data)
        if loc and loc[-1] == where
    ]
    if where == "value":  # the projections' templates: only projected-workflow has them
        candidates = [(n, loc) for n, loc in candidates if "envVars" in loc]
    name, loc = draw(st.sampled_from(candidates))
    data = copy.deepcopy(EXAMPLE_DATA[name])
    set_at(data, loc, draw(values))
    return dump(data, draw)


TOKENS = [
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!python/object/apply:os.system ['id']",
    b"!!binary ",
    b"!!set ",
    b"!!str ",
    b"!local ",
    b"%YAML 1.1\n",
    b"%TAG ! tag:evil,2000:\n",
    b"---\n",
    b"...\n",
    b"? ",
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"|\n",
    b">-\n",
    b"'",
    b'"',
    b'"\\0"',
    b'"\\x00"',
    b'"\\uD800"',
    b'"\\U0010FFFF"',
    b"\t",
    b"\r",
    b"\x85",
    b"\xe2\x80\xa8",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"#",
    b"${SHARED_VOLUME_ID}",
    b"${UNDEFINED}",
    b"$${X}",
    b"${{name}}",
    b"{{.Env.HOME}}",
    b"{{.secrets.app.API_TOKEN}}",
    b"1e999999",
    b"9" * 5000,
    b"0x" + b"f" * 100,
    b"2026-13-45",
    b"190:20:30",
    b".nan",
    b"~",
    b"=",
    b"  " * 50,
]


@st.composite
def spliced_examples(draw: st.DrawFn) -> bytes:
    """An example file with YAML syntax, escapes and odd bytes inserted, deleted or repeated."""
    data = bytearray(EXAMPLE_BYTES[draw(st.sampled_from(sorted(EXAMPLE_BYTES)))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "insert", "delete", "repeat", "byte"]))
        if action == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif action == "repeat":
            chunk = bytes(data[at : at + draw(st.integers(1, 200))])
            data[at:at] = chunk * draw(st.integers(1, 20))
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


UTF16_32 = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


@st.composite
def encoded_examples(draw: st.DrawFn) -> bytes:
    """An example in another encoding, with BOMs, invalid UTF-8, NULs or surrogates."""
    text = EXAMPLE_BYTES[draw(st.sampled_from(sorted(EXAMPLE_BYTES)))].decode()
    text = text.replace("description: ", "description: " + draw(st.text(max_size=8)) + " ", 1)
    how = draw(
        st.sampled_from(
            [*UTF16_32, "bom", "boms", "bom-late", "latin-1", "invalid", "nul", "surrogate"]
        )
    )
    if how in UTF16_32:
        return text.encode(how, "surrogatepass")
    data = text.encode("utf-8", "surrogatepass")
    at = draw(st.integers(0, len(data)))
    odd = {
        "bom": codecs.BOM_UTF8 + data,
        "boms": codecs.BOM_UTF8 * draw(st.integers(2, 4)) + data,
        "bom-late": data[:at] + codecs.BOM_UTF8 + data[at:],
        "latin-1": (text + "\ncaf\xe9: na\xefve\n").encode("latin-1", "replace"),
        "invalid": data[:at]
        + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]))
        + data[at:],
        "nul": data[:at] + b"\x00" * draw(st.integers(1, 3)) + data[at:],
        "surrogate": data[:at] + "\ud800".encode("utf-8", "surrogatepass") + data[at:],
    }
    return odd[how]


def alias_bomb(levels: int, fanout: int, kind: str) -> bytes:
    """Billion laughs: fanout ** levels leaves through aliases, as lists, maps or merges."""
    lines = [
        "version: v2alpha",
        "name: bomb",
        "type: workflow",
        "x0: &x0 [" + ", ".join(['"lol"'] * fanout) + "]",
    ]
    for level in range(1, levels + 1):
        refs = [f"*x{level - 1}"] * fanout
        if kind == "seq":
            lines.append(f"x{level}: &x{level} [{', '.join(refs)}]")
        elif kind == "map":
            pairs = ", ".join(f"k{i}: {ref}" for i, ref in enumerate(refs))
            lines.append(f"x{level}: &x{level} {{{pairs}}}")
        else:  # merge keys over maps of lists
            if level == 1:
                lines.append("m0: &m0 {a: *x0}")
            pairs = ", ".join(f"*m{level - 1}" for _ in range(fanout))
            lines.append(f"m{level}: &m{level} {{<<: [{pairs}], k{level}: *x{level - 1}}}")
            lines.append(f"x{level}: &x{level} [{', '.join(refs)}]")
    lines.append(f"spec: *x{levels}")
    return ("\n".join(lines) + "\n").encode()


def deep(depth: int, style: str) -> bytes:
    if style == "flow-seq":
        return b"spec: " + b"[" * depth + b"x" + b"]" * depth + b"\n"
    if style == "flow-map":
        return b"spec: " + b"{a: " * depth + b"x" + b"}" * depth + b"\n"
    if style == "block-seq":
        return (
            b"spec:\n" + b"".join(b"  " * i + b"-\n" for i in range(depth)) + b"  " * depth + b"x\n"
        )
    if style == "block-map":
        return b"spec:\n" + b"".join(b"  " * (i + 1) + b"a:\n" for i in range(depth))
    return b"spec: " + b"[{a: " * depth + b"x" + b"}]" * depth + b"\n"  # mixed


def duplicated(data: Any, target: tuple[Any, ...], indent: int | None) -> str:
    """JSON (which is YAML) of data, where the mapping at target repeats its first key."""

    def emit(node: Any, loc: tuple[Any, ...]) -> str:
        if isinstance(node, dict):
            items = [(k, emit(v, (*loc, k))) for k, v in node.items()]
            if loc == target and items:
                items.append(items[0])
            pad = "\n" + " " * (indent or 0) * (len(loc) + 1) if indent else ""
            body = ",".join(f"{pad}{json.dumps(str(k))}: {v}" for k, v in items)
            return "{" + body + ("\n" if indent else "") + "}"
        if isinstance(node, list):
            return "[" + ", ".join(emit(v, (*loc, i)) for i, v in enumerate(node)) + "]"
        return json.dumps(node)

    return emit(data, ())


# -- the strategies ----------------------------------------------------------------------


@fuzz(400)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    check_manifest(data, "arbitrary bytes")
    check_config(data, "arbitrary bytes (repo config)")


@fuzz(300)
@given(mutated_examples())
def test_wrong_types_anywhere(data: bytes) -> None:
    check_manifest(data, "wrong types (mutated examples)")


@fuzz(300)
@given(spliced_examples())
def test_spliced_syntax_and_bytes(data: bytes) -> None:
    check_manifest(data, "spliced syntax and bytes")


@fuzz(100)
@given(spliced_examples())
def test_spliced_with_the_pure_python_loader(data: bytes) -> None:
    with pure_python_loader():
        check_manifest(data, "spliced (pure-Python loader)")


@fuzz(200)
@given(encoded_examples())
def test_odd_encodings(data: bytes) -> None:
    load = check_manifest(data, "odd encodings")
    if data.startswith(codecs.BOM_UTF8) and b"\xef\xbb\xbf" not in data[3:]:
        stripped = data.lstrip(codecs.BOM_UTF8)
        try:
            stripped.decode("utf-8")
        except UnicodeDecodeError:
            return
        assert load == check_manifest(stripped, "odd encodings"), "a BOM changed the result"


@fuzz(60)
@given(st.integers(1, 12), st.integers(2, 12), st.sampled_from(["seq", "map", "merge"]))
def test_alias_bombs(levels: int, fanout: int, kind: str) -> None:
    data = alias_bomb(levels, fanout, kind)
    load = check_manifest(data, "alias bombs")
    if fanout**levels > 1_000_000:
        assert any("alias" in e.message for e in load.errors), load.errors
    # Just under the limit a bomb is expanded in full: seconds of CPU, honestly bounded;
    # the slower loader gets the cheap cases and the refused ones.
    if fanout**levels <= 20_000 or fanout**levels > 5_000_000:
        with pure_python_loader():
            check_manifest(data, "alias bombs (pure-Python loader)")


@fuzz(60)
@given(
    st.one_of(st.integers(1, 300), st.integers(300, 20_000)),
    st.sampled_from(["flow-seq", "flow-map", "block-seq", "block-map", "mixed"]),
)
def test_deep_nesting(depth: int, style: str) -> None:
    data = deep(depth, style)
    load = check_manifest(data, "deep nesting")
    if depth > 100:
        assert load.errors
        assert not load.workflows
    if depth <= 500:  # the pure-Python composer recurses: the limit must still hold
        with pure_python_loader():
            check_manifest(data, "deep nesting (pure-Python loader)")


@fuzz(40)
@given(
    st.one_of(
        st.integers(0, 4096),
        st.integers(60_000, 70_000),
        st.integers((1 << 20) - 4096, (1 << 20) + 4096),
    ),
    st.sampled_from(["name", "description", "arguments", "key", "anchor", "comment"]),
    st.sampled_from(["plain", "single", "double", "literal"]),
    st.sampled_from([1 << 20, 1024, 64 << 20]),
)
def test_huge_strings(size: int, where: str, quoting: str, max_bytes: int) -> None:
    body = "x" * size
    value = {
        "plain": body,
        "single": f"'{body}'",
        "double": f'"{body}"',
        "literal": "|\n  " + body,
    }[quoting]
    base = EXAMPLE_BYTES["daily-report.yaml"].decode()
    text = {
        "name": base.replace("name: daily-report", f"name: {value}", 1),
        "description": base.replace('description: "', f'description: {value}\nx: "', 1),
        "arguments": base.replace("- -c", f"- {value}", 1),
        "key": f"{body}: 1\n" + base,
        "anchor": f"version: &{body} v2alpha\n" + base.split("\n", 1)[1],
        "comment": f"# {body}\n" + base,
    }[where]
    data = text.encode()
    load = check_manifest(data, "huge strings", max_bytes=max_bytes)
    if len(data) > max_bytes:
        assert [e.message for e in load.errors if "more than the limit" in e.message]


@fuzz(200)
@given(st.data())
def test_duplicate_keys(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(EXAMPLE_DATA)))
    manifest = EXAMPLE_DATA[name]
    mappings = [loc for loc in all_locs(manifest) if get_at(manifest, loc)]
    mappings = [loc for loc in mappings if isinstance(get_at(manifest, loc), dict)]
    target = data.draw(st.sampled_from(mappings))
    text = duplicated(manifest, target, data.draw(st.sampled_from([None, 2])))
    load = check_manifest(text.encode(), "duplicate keys")
    assert [e for e in load.errors if "duplicate key" in e.message], load.errors
    assert not load.workflows


@fuzz(300)
@given(
    st.sampled_from(["id", "name", "directory", "contextAlias", "key"]).flatmap(
        lambda where: placed(
            where, st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=20))
        ).map(lambda data: (where, data))
    )
)
def test_path_traversal_in_names_and_ids(case: tuple[str, bytes]) -> None:
    where, data = case
    check_manifest(data, f"path traversal ({where})")


@fuzz(300)
@given(
    placed(
        "value",
        st.one_of(
            st.sampled_from(HOSTILE_TEMPLATES),
            st.lists(st.sampled_from([*HOSTILE_TEMPLATES, "x", "{", "}", "."]), max_size=5).map(
                "".join
            ),
            st.text(alphabet="{}.$ abcsecrtpjdfuAPI_TOKEN|-`\"'\\", max_size=40),
        ),
    )
)
def test_templates_reach_nothing_else(data: bytes) -> None:
    check_manifest(data, "templates")


def test_templates_outside_the_projections_are_refused() -> None:
    base = EXAMPLE_BYTES["projected-workflow.yaml"].decode()
    for template in HOSTILE_TEMPLATES[:21]:
        text = base.replace("{{.defaultProjections.dataOsRunId}}", template)
        load = check_manifest(yaml_quoted(text, template), "templates (each refused)")
        assert load.errors, template
        assert not load.workflows, template


def yaml_quoted(text: str, template: str) -> bytes:
    return text.replace(f'"{template}"', json.dumps(template)).encode()


@fuzz(100)
@given(st.dictionaries(st.sampled_from(sorted(VARIABLES)), st.text(max_size=30)))
def test_hostile_variable_values(values: dict[str, str]) -> None:
    data = EXAMPLE_BYTES["customer-batch-pipeline.yaml"]
    check_manifest(data, "hostile variable values", variables={**VARIABLES, **values})


@st.composite
def mutated_configs(draw: st.DrawFn) -> bytes:
    data = copy.deepcopy(CONFIG_DATA)
    for _ in range(draw(st.integers(1, 4))):
        loc = draw(st.sampled_from(all_locs(data)))
        kind = draw(st.sampled_from(["any", "workspace path", "variable", "exclude"]))
        if not isinstance(data, dict):  # the root itself was replaced
            kind = "any"
        if kind == "workspace path":
            hostile = st.sampled_from(HOSTILE_NAMES)
            if not isinstance(data.get("workspaces"), dict):  # replaced by a mutation before
                data["workspaces"] = {}
            data["workspaces"].setdefault("paths", {})
            if isinstance(data["workspaces"], dict) and isinstance(
                data["workspaces"].get("paths"), dict
            ):
                data["workspaces"]["paths"][draw(hostile)] = draw(hostile)
        elif kind == "variable" and isinstance(data.get("variables"), dict):
            data["variables"][draw(st.one_of(st.sampled_from(HOSTILE_NAMES), st.text()))] = draw(
                SCALARS
            )
        elif kind == "exclude":
            data["exclude"] = draw(st.lists(st.one_of(st.text(), st.sampled_from(HOSTILE_NAMES))))
        else:
            data = set_at(data, loc, draw(VALUES))
    return dump(data, draw)


@fuzz(300)
@given(st.one_of(mutated_configs(), spliced_examples()))
def test_repo_config(data: bytes) -> None:
    check_config(data, "repo config")


def test_known_hostile_files() -> None:
    """Named cases, so a regression says what broke."""
    valid = EXAMPLE_BYTES["customer-batch-pipeline.yaml"]
    cases = {
        "billion laughs": alias_bomb(9, 9, "seq"),
        "recursive alias": b"a: &a [*a]\n",
        "NUL escape in a command": valid.replace(b"- sh", b'- "s\\0h"', 1),
        "NUL escape in a directory": valid.replace(
            b"directory: /workspace", b'directory: "/work\\x00space"', 1
        ),
        "NUL escape in a key": valid.replace(b"title:", b'"ti\\0tle":', 1),
        "trailing newline in a name": valid.replace(
            b"name: customer-batch-pipeline", b'name: "customer-batch-pipeline\\n"', 1
        ),
        "trailing newline in a step": valid.replace(b"- name: publish", b'- name: "publish\\n"', 1),
        "memory beyond Kubernetes": EXAMPLE_BYTES["daily-report.yaml"].replace(
            b"memory: 512Mi", b"memory: 1e999999", 1
        ),
        "memory out of Decimal's range": EXAMPLE_BYTES["daily-report.yaml"].replace(
            b"memory: 512Mi", b"memory: 1e9999999999", 1
        ),
        "cpu exponent with 5,000 digits": EXAMPLE_BYTES["daily-report.yaml"].replace(
            b"cpu: 500m", b"cpu: 1e" + b"9" * 5000, 1
        ),
        "python tag": b"!!python/object/apply:os.system ['id']\n",
        "UTF-16": valid.decode().encode("utf-16"),
    }
    for what, data in cases.items():
        load = check_manifest(data, "known hostile files")
        assert load.errors, what
        assert not load.workflows, what


# -- atheris: coverage-guided, in a process of its own -----------------------------------

ATHERIS_HARNESS = """
import sys
import atheris

with atheris.instrument_imports(include=["reconciler"]):
    from reconciler.core.loading import load_manifest_file, load_repo_config


def check(problems, path):
    for problem in problems:
        if problem.path != path or problem.line is None or problem.line < 1:
            raise AssertionError(f"a problem without a position: {problem!r}")
        problem.render().encode("utf-8")


def one_input(data: bytes) -> None:
    load = load_manifest_file(
        "fuzz.yaml", data, workspace="public", variables={"SHARED_VOLUME_ID": "v"}
    )
    check(load.errors + load.notes, "fuzz.yaml")
    _, problems = load_repo_config(data)
    check(problems, ".reconciler.yaml")


atheris.Setup(sys.argv, one_input)
atheris.Fuzz()
"""


def test_atheris(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in EXAMPLE_BYTES.items():
        (corpus / name).write_bytes(data)
    (corpus / CONFIG_FILE.lstrip(".")).write_bytes(CONFIG_BYTES)
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    seconds = 600 if SOAK else 20
    done = subprocess.run(
        [
            sys.executable,
            str(harness),
            f"-max_total_time={seconds}",
            f"-runs={10_000_000 if SOAK else 10_000}",
            "-timeout=10",  # seconds per input: a hang is a failure
            "-rss_limit_mb=2048",
            "-max_len=65536",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=Path(__file__).resolve().parents[2],
    )
    runs = re.findall(r"Done (\d+) runs", done.stderr)
    CASES["atheris (coverage-guided bytes)"] += int(runs[-1]) if runs else 0
    assert done.returncode == 0, done.stderr[-4000:]
    assert runs, done.stderr[-2000:]
