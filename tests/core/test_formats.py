"""Field formats: quantities, crons, durations, names, templates, variables."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from reconciler.core.crons import check_cron, expand_cron
from reconciler.core.durations import parse_duration
from reconciler.core.names import check_label
from reconciler.core.quantities import QuantityError, memory_bytes, parse_quantity
from reconciler.core.templates import (
    DefaultRef,
    SecretRef,
    check_template,
    parse_template,
    render_template,
)
from reconciler.core.variables import merge_variables, substitute_variables


@pytest.mark.parametrize(
    ("text", "value"),
    [
        pytest.param("100m", Decimal("0.1"), id="milli"),
        pytest.param("1", Decimal(1), id="plain"),
        pytest.param("1.5", Decimal("1.5"), id="decimal"),
        pytest.param("512Mi", Decimal(512 * 2**20), id="mebi"),
        pytest.param("1Gi", Decimal(2**30), id="gibi"),
        pytest.param("2k", Decimal(2000), id="kilo"),
        pytest.param("1e3", Decimal(1000), id="exponent"),
        pytest.param("128M", Decimal(128_000_000), id="mega"),
        pytest.param(2, Decimal(2), id="int"),
    ],
)
def test_parse_quantity(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "12XB", "1.2.3", "Mi", "1 Gi", "0x10"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(QuantityError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_memory_bytes_rounds_up() -> None:
    assert memory_bytes("1500m") == 2
    assert memory_bytes("1Ki") == 1024


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        pytest.param("0 2 * * *", None, id="daily"),
        pytest.param("*/15 * * * 1-5", None, id="interval"),
        pytest.param("@daily", None, id="macro"),
        pytest.param("0 0 * * * *", "expected 5 fields", id="six-fields"),
        pytest.param("* * * *", "expected 5 fields", id="four-fields"),
        pytest.param("60 * * * *", "not a valid cron", id="minute-range"),
        pytest.param("@reboot", "unknown macro", id="reboot"),
        pytest.param("CRON_TZ=UTC 0 2 * * *", "time zone prefixes", id="tz-prefix"),
        pytest.param("", "empty", id="empty"),
    ],
)
def test_check_cron(expression: str, problem: str | None) -> None:
    found = check_cron(expression)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_expand_cron_macros() -> None:
    assert expand_cron("@hourly") == "0 * * * *"
    assert expand_cron("0  2 * * *") == "0 2 * * *"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1x", "h", "0s", "1.5h", "-1h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("daily-report", True),
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Daily", False),
        ("-lead", False),
        ("trail-", False),
        ("under_score", False),
        ("../etc", False),
        ("", False),
    ],
)
def test_check_label(value: str, ok: bool) -> None:
    assert (check_label(value) is None) == ok


def test_parse_template_finds_both_kinds() -> None:
    parts = parse_template("id={{.defaultProjections.dataOsRunId}} t={{ .secrets.app.API_TOKEN }}")
    refs = [p.ref for p in parts if p.ref is not None]
    assert refs == [DefaultRef("dataOsRunId"), SecretRef("app", "API_TOKEN")]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("{{.defaultProjections.dataOsRunId}}", None, id="default"),
        pytest.param("{{.secrets.app.KEY}}", None, id="secret-in-scope"),
        pytest.param("{{.secrets.other.KEY}}", "not declared", id="secret-out-of-scope"),
        pytest.param("{{.defaultProjections.nope}}", "unknown default projection", id="unknown"),
        pytest.param("{{ .Env.HOME }}", "unsupported template", id="other-root"),
        pytest.param('{{ printf "%s" .secrets.app.KEY }}', "unsupported", id="function"),
        pytest.param("{{.secrets.app.KEY", "not closed", id="unclosed"),
        pytest.param("plain text", None, id="no-template"),
    ],
)
def test_check_template(value: str, problem: str | None) -> None:
    found = check_template(value, secret_aliases=frozenset({"app"}))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0]


def test_render_template() -> None:
    def resolve(ref: DefaultRef | SecretRef) -> str:
        return "R1" if isinstance(ref, DefaultRef) else f"<{ref.alias}.{ref.key}>"

    rendered = render_template("{{.defaultProjections.dataOsRunId}}:{{.secrets.a.B}}!", resolve)
    assert rendered == "R1:<a.B>!"


def test_substitute_variables() -> None:
    data = {"a": "${X}/x", "b": ["$${X}", 3], "c": {"${X}": "k"}}
    result, findings = substitute_variables(data, {"X": "v"})
    assert findings == []
    assert result == {"a": "v/x", "b": ["${X}", 3], "c": {"${X}": "k"}}


def test_substitute_variables_reports_undefined_and_placeholders() -> None:
    _, findings = substitute_variables({"a": ["${NOPE}"], "b": "${{name}}"}, {})
    assert [(f.loc, f.message.split(";")[0]) for f in findings] == [
        (("a", 0), "undefined variable ${NOPE}"),
        (("b",), "placeholder ${{name}} is not filled in"),
    ]


def test_environment_overrides_variables() -> None:
    merged = merge_variables({"A": "1", "B": "2"}, {"RECONCILER_VAR_B": "3", "HOME": "/root"})
    assert merged == {"A": "1", "B": "3"}
