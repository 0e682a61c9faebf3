"""The fast path for the common manifest file: parse it with ``yaml_rs`` (Rust).

Slow path it replaces: :func:`reconciler.core.yamldocs.load_documents`, which composes
the file into libyaml nodes and converts them node by node in Python, recording the
line and column of every key and value (about 1.2 ms for a 2 KB manifest, ten times
``yaml_rs``).  Those positions are only needed when a file has a problem, so the
loader tries this path first and goes back to the slow one for any file that does
not validate, which then reports every problem at its FILE:LINE:COL.

The two must read every file the same way, and they do not speak the same YAML:
``yaml_rs`` reads YAML 1.2, while the reconciler reads YAML 1.1 exactly as PyYAML's
safe loader does (``yes`` and ``on`` are true, ``017`` is octal, ``1e3`` is text,
``12:30`` is sexagesimal, tags and merge keys are checked).  So :func:`load_plain`
answers only for a file that cannot tell them apart, and ``None`` otherwise:

- one document, at most one leading ``---``, no directives, no ``...``;
- only printable characters, no tab, no carriage return and no line break other
  than ``\\n``;
- no node that starts with a tag, an anchor or an alias, and no escape (``\\``)
  in a double-quoted scalar (elsewhere a backslash is just a character);
- no text (key or value) that PyYAML would read as anything but text were it
  written plain: ``yes``, ``on``, ``12:30``, ``2024-01-01``, ``<<``, ``=``...;
- when ``yaml_rs`` read a number anywhere, every plain scalar in the file that
  either reader could take for a number is a plain decimal (``12``, ``-3``,
  ``0.5``), which both read alike (not ``017``, ``0o17``, ``1e3``, ``0x1f``);
- only text keys, only plain data, within the nesting and node limits.

The checks over-match (a quoted ``"yes"``, or a ``- 017`` line inside a block of
shell text, sends the file to the slow path too): that costs time, never a
different result.
``tests/core/test_fastyaml.py`` compares both paths on generated and real files.
"""

from __future__ import annotations

import re
from typing import Any, Final

from yaml.resolver import Resolver

from reconciler.core.yamldocs import DEFAULT_LIMITS, YamlLimits

try:  # an optional speed-up: without it every file takes the slow path
    import yaml_rs
except ImportError:  # pragma: no cover - yaml_rs is a declared dependency
    yaml_rs = None  # type: ignore[assignment]

__all__ = ["available", "load_plain"]

# Printable ASCII and "\n": what an ASCII file may hold.
_ASCII_OK: Final = bytes([0x0A, *range(0x20, 0x7F)])

# For other files: anything but those and printable non-ASCII (NEL, LS, PS and the
# BOM are excluded, YAML 1.1 reads some of them as line breaks).
_UNSAFE_CHARACTER: Final = re.compile(
    "[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)

# Blank and comment lines, then a lone "---" (optionally with a comment).
_LEADING_START: Final = re.compile(r"(?:[ ]*(?:#[^\n]*)?\n)*---[ ]*(?:#[^\n]*)?(?:\n|$)")

# The first line holding content: the line the slow path reports a document at.
_CONTENT_LINE: Final = re.compile(r"^[ ]*[^ \n#]", re.MULTILINE)

# A plain scalar that starts like a number, where a node may start (line start,
# after a flow indicator, or after ": ", "- ", "? ").
_NUMBER_TOKEN: Final = re.compile(r"(?:^|[\[{,]|[:?-][ ])[ ]*([-+.]?[0-9][^ \n,\[\]{}#]*)", re.M)

# A token both readers take for the same number: a plain decimal integer of at most
# 18 digits, or a decimal fraction without an exponent.
_SAME_NUMBER: Final = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?")

# A token made only of characters that numbers, hex, octal, binary, sexagesimal and
# timestamps use: either reader might take it for something other than text.
_NUMBER_LIKE: Final = re.compile(r"[-+.:_0-9a-fA-FoOxX]+")

# What PyYAML would read a plain scalar as, were it not text (YAML 1.1): a boolean,
# merge key or value word, or, for text that starts like a number, an int, a float or
# a timestamp (the patterns of ``yaml.resolver.Resolver``).  The words both read alike
# (true, False, NULL, ~...) are missing: yaml_rs reads them plain as PyYAML does, so
# as text they were quoted, and PyYAML reads them as text too.
_WORDS: Final = frozenset(
    {"yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "<<", "="}
)
_NUMBER_FIRST: Final = frozenset("0123456789+-.")
# ...and ends like one (a digit, "_", ".", a hex digit, the "f" of ".inf", the "n" of
# ".nan", the "Z" of a time): a cheap filter before the patterns (~5 us a match).
_NUMBER_LAST: Final = frozenset("0123456789_.abcdefABCDEFnNZ")
_IMPLICIT_NUMBER: Final = re.compile(
    "|".join(
        f"(?:{regexp.pattern})"
        for tag, regexp in Resolver.yaml_implicit_resolvers["1"]
        + Resolver.yaml_implicit_resolvers["."]
        + Resolver.yaml_implicit_resolvers["-"]
    ),
    re.X,
)


def available() -> bool:
    """Whether the fast path can be taken at all (``yaml_rs`` is importable)."""
    return yaml_rs is not None


def load_plain(data: bytes, *, limits: YamlLimits = DEFAULT_LIMITS) -> tuple[Any, int] | None:
    """``(data, line)`` of a one-document file both readers read alike, else ``None``.

    ``line`` is the 1-based line where the document's content starts.  ``None`` means
    "take the slow path": this function never raises for a bad file.
    """
    if yaml_rs is None or len(data) > limits.max_bytes or len(data) >= limits.max_nodes:
        return None
    if data.isascii():
        if data.translate(None, _ASCII_OK):
            return None
        text = data.decode("ascii")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _UNSAFE_CHARACTER.search(text) is not None:
            return None
    body_start = _body_start(text)
    if body_start is None or _indicator_at_node_start(text):
        return None
    try:
        loaded = yaml_rs.loads(text, parse_datetime=False)
    except Exception:  # any failure: the slow path reports it at its line
        return None
    plain = _plain(loaded, limits)
    if plain is None or (plain and not _numbers_alike(text)):
        return None
    content = _CONTENT_LINE.search(text, body_start)
    line = text.count("\n", 0, content.start()) + 1 if content is not None else 1
    return loaded, line


def _body_start(text: str) -> int | None:
    """Where the one document starts (after a leading ``---``); ``None`` for any other
    document marker or directive."""
    if not (text.startswith(("---", "...", "%")) or "\n---" in text or "\n..." in text):
        return None if "\n%" in text else 0
    leading = _LEADING_START.match(text)
    if leading is None:
        return None
    end = leading.end()
    rest = text[end - 1 :] if end else text
    if "\n---" in rest or "\n..." in rest or "\n%" in rest:
        return None
    return end


def _indicator_at_node_start(text: str) -> bool:
    """Whether a tag (``!``), an anchor (``&``) or an alias (``*``) may start a node,
    or a double-quoted scalar holds a backslash (an escape).

    ``echo a && b`` or a cron's ``* * *`` do not: only one after the start of a line,
    ``[``, ``{``, ``,``, or ``:``/``-``/``?`` and a space does.
    """
    for char in '!&*"' if "\\" in text else "!&*":
        index = text.find(char)
        while index != -1:
            before = index - 1
            while before >= 0 and text[before] == " ":
                before -= 1
            previous = text[before] if before >= 0 else "\n"
            if previous in "\n[{," or (previous in ":-?" and before < index - 1):
                if char != '"':
                    return True
                # a double-quoted scalar: up to the next quote (an escaped one has a
                # backslash before it), it must hold no backslash
                end = text.find('"', index + 1)
                if end == -1 or text.find("\\", index + 1, end) != -1:
                    return True
                index = end
            index = text.find(char, index + 1)
    return False


def _numbers_alike(text: str) -> bool:
    """Whether every plain scalar that starts like a number is one both readers read alike."""
    for match in _NUMBER_TOKEN.finditer(text):
        token = match.group(1)
        if _NUMBER_LIKE.fullmatch(token) and not _SAME_NUMBER.fullmatch(token):
            return False
    return True


def _is_text(value: str) -> bool:
    """Whether PyYAML would read ``value`` as text even if it were written plain."""
    if value in _WORDS:
        return False
    if value[:1] not in _NUMBER_FIRST or value[-1:] not in _NUMBER_LAST:
        return True
    return _IMPLICIT_NUMBER.match(value) is None


def _plain(data: Any, limits: YamlLimits) -> bool | None:
    """Whether the data holds a number (``None``: not plain, take the slow path).

    Plain means: a mapping at the root, text keys only (the slow path reads ``1`` and
    ``+1``, or ``true`` and ``1``, as the same key and refuses the duplicate, where a
    Python ``dict`` would merge them), only text, numbers, booleans and nulls below,
    no text PyYAML would read as another type, within the nesting and node limits.
    """
    if type(data) is not dict:
        return None
    numbers = False
    nodes = 1  # counted as the slow path counts: every value and every key
    todo: list[tuple[Any, int]] = [(data, 1)]
    max_depth, max_nodes = limits.max_depth, limits.max_nodes
    # _is_text inlined: this loop runs for every node of every manifest
    words, first, last, number = _WORDS, _NUMBER_FIRST, _NUMBER_LAST, _IMPLICIT_NUMBER.match
    while todo:
        node, depth = todo.pop()
        if depth > max_depth:
            return None
        if type(node) is dict:
            nodes += 2 * len(node)
            for key in node:
                if type(key) is not str or key in words:
                    return None
                if key[:1] in first and key[-1:] in last and number(key) is not None:
                    return None
            values = node.values()
        else:
            nodes += len(node)
            values = node
        if nodes > max_nodes:
            return None
        for value in values:
            kind = type(value)
            if kind is str:
                if value in words:
                    return None
                if value[:1] in first and value[-1:] in last and number(value) is not None:
                    return None
            elif kind is dict or kind is list:
                todo.append((value, depth + 1))
            elif kind is int or kind is float:
                numbers = True
            elif kind is not bool and value is not None:
                return None
    return numbers
