"""Turning pydantic's validation errors into findings people can act on.

Unknown fields get a "did you mean" from the fields the model allows at that
place; missing fields point at their parent; pydantic's "Value error, "
prefix is dropped.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from reconciler.core.problems import Finding, Loc


def findings_from_validation_error(
    error: ValidationError, model: type[BaseModel], *, prefix: Loc = ()
) -> list[Finding]:
    """One finding per pydantic error, located at prefix + its loc."""
    findings: list[Finding] = []
    items = error.errors(include_url=False)
    # A collection whose item failed is also "too short" for pydantic; say only the cause.
    failed_below = {
        tuple(item["loc"])[:depth] for item in items for depth in range(len(item["loc"]))
    }
    for item in items:
        loc: Loc = tuple(item["loc"])
        if item["type"] == "too_short" and loc in failed_below:
            continue
        at_key = False
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            at_key = True
        kind = item["type"]
        if kind == "extra_forbidden":
            findings.append(Finding((*prefix, *loc), _unknown_field(model, loc), at_key=True))
        elif kind == "missing":
            findings.append(Finding((*prefix, *loc), "required field is missing", at_key=True))
        elif kind in ("tuple_type", "list_type"):
            findings.append(Finding((*prefix, *loc), "expected a list (a YAML sequence)"))
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            findings.append(Finding((*prefix, *loc), "expected a mapping of fields"))
        else:
            message = str(item["msg"])
            for noise in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(noise)
            if kind in ("too_short", "too_long") and isinstance(item.get("input"), list | tuple):
                message = _length_message(item)
            findings.append(Finding((*prefix, *loc), message, at_key=at_key))
    return findings


def _length_message(item: Any) -> str:
    ctx = item.get("ctx") or {}
    if item["type"] == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    return f"has more than {ctx.get('max_length')} items"


def _unknown_field(model: type[BaseModel], loc: Loc) -> str:
    name = str(loc[-1]) if loc else "?"
    allowed = allowed_fields(model, loc[:-1])
    if not allowed:
        return f"unknown field {name!r}"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if not close:
        lowered = {a.lower(): a for a in allowed}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {name!r}{hint} (allowed here: {', '.join(allowed)})"


def allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    """The wire names a model accepts at loc, or [] when loc is not a model."""
    current: Any = model
    for part in loc:
        current = _step_into(current, part)
        if current is None:
            return []
    model_type = _as_model(current)
    if model_type is None:
        return []
    return [info.alias or name for name, info in model_type.model_fields.items()]


def _step_into(annotation: Any, part: str | int) -> Any:
    model_type = _as_model(annotation)
    if isinstance(part, str):
        if model_type is None:
            return None
        for name, info in model_type.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    inner = _unwrap(annotation)
    args = typing.get_args(inner)
    if typing.get_origin(inner) in (tuple, list) and args:
        return args[0]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    inner = _unwrap(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None
