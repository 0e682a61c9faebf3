"""The yaml_rs fast path reads every file it accepts exactly as the slow path does.

``load_plain`` may decline any file (``None``: the slow path reads it); what it must
never do is accept a file and read it differently from ``load_documents`` (YAML 1.1
as PyYAML reads it), or accept a file the slow path refuses.  These tests compare
both on real files, on hand-picked traps, and on generated YAML.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import manifests, scheduled_manifests
from reconciler.core import fastyaml, loading
from reconciler.core.fastyaml import load_plain
from reconciler.core.loading import load_manifest_file
from reconciler.core.yamldocs import YamlLimits, YamlLoadError, load_documents
from tests.conftest import EXAMPLES_REPO, GOLDEN

VARIABLES = {"SHARED_VOLUME_ID": "shared-volume"}


def same(left: Any, right: Any) -> bool:
    """Equal, with equal types all the way down (``1``, ``1.0`` and ``True`` differ)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def check_agrees(data: bytes, limits: YamlLimits | None = None) -> bool:
    """Assert the fast path agrees with the slow one; whether it accepted the file."""
    limits = limits or YamlLimits()
    fast = load_plain(data, limits=limits)
    try:
        slow = load_documents(data, limits=limits)
    except YamlLoadError:
        assert fast is None, f"the fast path accepted a file the slow path refuses: {data!r}"
        return False
    if fast is None:
        return False
    assert len(slow.documents) == 1, data
    assert not slow.notes, data
    (document,) = slow.documents
    assert same(fast[0], document.data), (data, fast[0], document.data)
    assert fast[1] == document.start[0], data
    return True


def corpus() -> list[Path]:
    files = [*EXAMPLES_REPO.rglob("*.yaml"), *GOLDEN.rglob("*.yaml")]
    return sorted(files)


@pytest.mark.parametrize("path", corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_files_agree_and_load_the_same(path: Path) -> None:
    check_agrees(path.read_bytes())
    fast = load_manifest_file(path.name, path.read_bytes(), workspace="public", variables=VARIABLES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "load_plain", lambda data, limits: None)
        slow = load_manifest_file(
            path.name, path.read_bytes(), workspace="public", variables=VARIABLES
        )
    assert fast == slow


def test_the_examples_and_generated_manifests_take_the_fast_path() -> None:
    """A guard that declines everything would pass every other test here."""
    examples = sorted((EXAMPLES_REPO / "workflows").glob("*.yaml"))
    assert [p.name for p in examples if not check_agrees(p.read_bytes())] == []
    generated = {**manifests(50), **scheduled_manifests(50)}
    assert [p for p, data in generated.items() if not check_agrees(data)] == []


@pytest.mark.parametrize(
    "text",
    [
        # YAML 1.1 words and numbers that YAML 1.2 reads otherwise
        "a: yes\n",
        "a: No\n",
        "a: on\n",
        "on: push\n",
        "a: [x, OFF]\n",
        "a: 017\n",
        "a: 0o17\n",
        "a: 1e3\n",
        "a: 1.5e3\n",
        "a: 1_000\n",
        "a: 0x1F\n",
        "a: 0b101\n",
        "a: 12:30\n",
        "a: 190:20:30.15\n",
        "a: 2024-01-01\n",
        "a: 2001-12-14t21:59:43.10-05:00\n",
        "a: 1.7976931348623157e309\n",
        "a: .5\n",
        "a: 1.\n",
        "a: 123456789012345678901234567890\n",
        "a: [1, 017]\n",
        "a: {b: 0o7}\n",
        "a:\n  - 1\n  - 2024-01-01\n",
        # keys other than text
        "1: x\n",
        "true: x\n",
        "1.5: x\n",
        "~: x\n",
        "null: x\n",
        "? [a, b]\n: c\n",
        "[a, b]: c\n",
        "{a: 1}: c\n",
        "a: 1\n+1: 2\n",
        # merge keys, values, tags, anchors, aliases
        "<<: {a: 1}\nb: 2\n",
        "a: =\n",
        "a: !foo x\n",
        "a: !!str 12\n",
        "a: !!binary aGk=\n",
        "a: &x [1]\nb: *x\n",
        "a:\n  - &x 1\n  - *x\n",
        "a: [*x]\n",
        # documents, directives, odd characters
        "%YAML 1.1\n---\na: 1\n",
        "a: 1\n---\nb: 2\n",
        "a: 1\n...\n",
        "---\na: 1\n---\n",
        "a:\tb\n",
        "a: b\r\n",
        "a: b\x85c\n",
        "a: b\u2028c\n",
        '\ufeffa: "b"\n',
        'a: "\\x41"\n',
        'a: "b\\0c"\n',
        "a: b\x07\n",
        # not a single mapping, or broken
        "- a\n",
        "just text\n",
        "",
        "# only a comment\n",
        "a: 1\na: 2\n",
        "a: 1\n'a': 2\n",
        "a: [1\n",
        "a: b: c\n",
        "a: 'unterminated\n",
    ],
)
def test_traps_are_declined_or_read_alike(text: str) -> None:
    data = text.encode("utf-8")
    accepted = check_agrees(data)
    assert not accepted or text in ACCEPTED_TRAPS, f"unexpectedly accepted: {text!r}"


# Traps the fast path may take because both readers agree on them.
ACCEPTED_TRAPS = {"? [a, b]\n: c\n"}


@pytest.mark.parametrize(
    "text",
    [
        "a: true\nb: True\nc: TRUE\nd: false\ne: False\nf: FALSE\n",
        "a: null\nb: Null\nc: NULL\nd: ~\ne:\n",
        'a: "true"\nb: "null"\nc: ""\nd: \'~\'\n',
        "a: 12\nb: -3\nc: 0\nd: 0.5\ne: 3.20\nf: +7\ng: .inf\nh: -.Inf\ni: .nan\n",
        'a: ["true", "* * * * *"]\nb: {c: d}\n',
        'a: |\n  printf \'\\n\' "x"\nb: "plain"\n',
    ],
)
def test_what_both_read_alike_is_taken(text: str) -> None:
    assert check_agrees(text.encode())


def test_leading_document_start_and_comments_keep_the_line() -> None:
    text = b"# header\n\n---  # start\n# more\n\nversion: v2alpha\nname: x\n"
    assert check_agrees(text)
    assert load_plain(text) is not None
    assert load_plain(text)[1] == 6  # type: ignore[index]


def test_limits_send_the_file_to_the_slow_path() -> None:
    deep = ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 6)) + "      c: 1\n").encode()
    assert check_agrees(deep, YamlLimits(max_depth=10))
    assert load_plain(deep, limits=YamlLimits(max_depth=3)) is None
    assert check_agrees(deep, YamlLimits(max_depth=3)) is False
    assert load_plain(b"a: [1, 2, 3, 4]\n", limits=YamlLimits(max_nodes=4)) is None
    assert load_plain(b"a: 1\n", limits=YamlLimits(max_bytes=4)) is None


def test_without_yaml_rs_every_file_takes_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastyaml, "yaml_rs", None)
    assert not fastyaml.available()
    assert load_plain(b"a: 1\n") is None
    path = EXAMPLES_REPO / "workflows" / "daily-report.yaml"
    loaded = load_manifest_file(path.name, path.read_bytes(), workspace="public", variables={})
    assert loaded.errors == ()
    assert len(loaded.workflows) == 1


# -- generated YAML -------------------------------------------------------------------

SCALARS = st.sampled_from(
    [
        "x", "text with spaces", "12", "-3", "0", "0.5", "3.20", "017", "0o17", "0x1f", "1e3",
        "1.5e+3", "1_000", "12:30", "2024-01-01", "2024-01-01 10:00:00", "yes", "No", "ON",
        "off", "y", "n", "true", "False", "null", "~", "", "=", "<<", ".inf", "-.Inf", ".nan",
        "NaN", "100m", "128Mi", "*/5 * * * *", "a && b", "a: b", "- x", "#x", "x # c", "'q'",
        '"dq"', "it's", "é", "&a", "*a", "!t", "[x]", "{x}", "%x", "@x", "`x", "? x", "-", ".",
    ]
)  # fmt: skip


def render_scalar(draw: st.DrawFn, value: str) -> str:
    style = draw(st.sampled_from(["plain", "single", "double"]))
    if style == "single":
        return "'" + value.replace("'", "''") + "'"
    if style == "double":
        return '"' + value.replace('"', "'") + '"'
    return value


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed block YAML with traps in its scalars, keys and indicators."""

    def node(depth: int, indent: int) -> list[str]:
        kind = draw(st.sampled_from(["map", "list", "flow"] if depth < 3 else ["flow"]))
        pad = " " * indent
        lines: list[str] = []
        if kind == "flow":
            items = draw(st.lists(SCALARS, max_size=3))
            opener, closer = draw(st.sampled_from([("[", "]"), ("{", "}")]))
            if opener == "[":
                body = ", ".join(render_scalar(draw, i) for i in items)
            else:
                body = ", ".join(f"k{n}: {render_scalar(draw, i)}" for n, i in enumerate(items))
            return [f"{pad}v: {opener}{body}{closer}"]
        for n in range(draw(st.integers(1, 4))):
            key = draw(st.one_of(st.just(f"k{n}"), SCALARS))
            head = f"{pad}{render_scalar(draw, key)}:" if kind == "map" else f"{pad}-"
            if draw(st.booleans()) or depth >= 3:
                block = draw(st.sampled_from(["", "", "", "|", ">-"]))
                if block:
                    lines += [f"{head} {block}", f"{pad}  {draw(SCALARS)}"]
                else:
                    lines.append(f"{head} {render_scalar(draw, draw(SCALARS))}".rstrip())
            else:
                lines.append(head)
                lines += node(depth + 1, indent + 2)
        return lines

    lines = ["---"] if draw(st.booleans()) else []
    lines += [f"name: {render_scalar(draw, draw(SCALARS))}", "spec:"]
    lines += node(1, 2)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), f"# {draw(SCALARS)}")
    return "\n".join(lines) + "\n"


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(yaml_texts())
def test_generated_yaml_is_declined_or_read_alike(text: str) -> None:
    check_agrees(text.encode("utf-8"))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("ab01:- \n'\"[]{},#&*!?|>%@.eEx_+~=<\t"), max_size=60))
def test_arbitrary_text_is_declined_or_read_alike(text: str) -> None:
    check_agrees(text.encode("utf-8"))
