"""Safe, position-aware loading of YAML manifest files.

``yaml.safe_load`` throws away where each value came from, builds alias bombs in
full before anyone can object, and quietly accepts duplicate keys.  Manifest
validation needs ``FILE:LINE:COL: field: message`` errors, and the reconciler must
survive hostile or broken files, so this module composes YAML into nodes (which
carry marks), checks limits and tags, and converts the nodes to plain Python data
itself while recording the line/column of every key and value.

Pure ``core`` code: it works on bytes handed to it and touches no files, clocks,
processes or network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "DEFAULT_LIMITS",
    "Loc",
    "Position",
    "YamlDocument",
    "YamlLimits",
    "YamlLoad",
    "YamlLoadError",
    "YamlNote",
    "load_documents",
]

Loc = tuple[str | int, ...]
"""Path into loaded data, e.g. ``("spec", "dag", 0, "name")``; the root is ``()``."""

Position = tuple[int, int]
"""1-based ``(line, column)``."""


class YamlLoadError(Exception):
    """A file could not be loaded; ``line``/``column`` are 1-based or ``None`` if unknown."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True)
class YamlNote:
    """Something worth telling the user that did not stop the file from loading."""

    line: int
    column: int
    message: str


@dataclass(frozen=True)
class YamlLimits:
    """Resource limits applied to every file."""

    max_bytes: int = 1 << 20
    max_nodes: int = 1_000_000
    max_depth: int = 100

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_nodes", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"YamlLimits.{name} must be at least 1")


DEFAULT_LIMITS: Final = YamlLimits()


@dataclass(frozen=True)
class YamlDocument:
    """One non-empty document of a file, with the position of every node."""

    index: int
    data: Any
    start: Position
    value_positions: Mapping[Loc, Position]
    key_positions: Mapping[Loc, Position]

    def position_of(self, loc: Loc, *, prefer_key: bool = False) -> Position:
        """Best position for loc: exact match (key position first when prefer_key),
        else walk up to the nearest ancestor that has one, else start."""
        values = self.value_positions
        keys = self.key_positions
        while True:
            if prefer_key:
                found = keys.get(loc)
                if found is not None:
                    return found
            found = values.get(loc)
            if found is not None:
                return found
            if not loc:
                return self.start
            loc = loc[:-1]


@dataclass(frozen=True)
class YamlLoad:
    """Result of :func:`load_documents`."""

    documents: tuple[YamlDocument, ...]
    notes: tuple[YamlNote, ...]


# --------------------------------------------------------------------------- internals

_T: Final = "tag:yaml.org,2002:"
_STR: Final = _T + "str"
_NULL: Final = _T + "null"
_BOOL: Final = _T + "bool"
_INT: Final = _T + "int"
_FLOAT: Final = _T + "float"
_TIMESTAMP: Final = _T + "timestamp"
_MERGE: Final = _T + "merge"
_VALUE: Final = _T + "value"  # PyYAML resolves a plain "=" to this; we read it as text
_SEQ: Final = _T + "seq"
_MAP: Final = _T + "map"

_BOM: Final = b"\xef\xbb\xbf"
_LINE_BREAKS: Final = re.compile("\r\n|[\r\n\x85\u2028\u2029]")

# Prefer libyaml; fall back to the pure-Python safe loader.  Module-level so tests
# can exercise the fallback.
_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Stateless for scalars: gives exactly safe_load's int/float/bool semantics
# (hex, octal, sexagesimal, "1_000", ".inf", "yes"/"on", ...).
_SAFE: Final = SafeConstructor()


def _timestamp_text(node: ScalarNode) -> str:
    text: str = node.value
    if SafeConstructor.timestamp_regexp.match(text) is None:
        raise ValueError(text)
    return text


def _value_text(node: ScalarNode) -> str:
    text: str = node.value
    return text


_CONSTRUCTORS: Final[dict[str, Callable[[ScalarNode], Any]]] = {
    _BOOL: _SAFE.construct_yaml_bool,
    _INT: _SAFE.construct_yaml_int,
    _FLOAT: _SAFE.construct_yaml_float,
    _TIMESTAMP: _timestamp_text,  # kept as the original text, never a datetime
    _VALUE: _value_text,
}

_Entries = list[tuple[str | int, Node, Node]]


class _NeedCareful(Exception):  # noqa: N818 - internal control flow, not an error
    """The fast conversion met an alias to a collection or a merge key."""


def _fail(message: str, node: Node) -> NoReturn:
    mark = node.start_mark
    raise YamlLoadError(message, line=mark.line + 1, column=mark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_T) :] if tag.startswith(_T) else tag


def _tag_error(node: Node, kind: str) -> NoReturn:
    _fail(
        f"tag {_short_tag(node.tag)} is not allowed on a {kind}; only plain data "
        "(mappings, lists, strings, numbers, booleans, null) can be used",
        node,
    )


def _scalar(node: ScalarNode) -> Any:
    """Python value of a scalar node (the caller handles the common ``str`` tag)."""
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _NULL:
        return None
    construct = _CONSTRUCTORS.get(tag)
    if construct is None:
        if tag == _MERGE:
            _fail("'<<' (merge key) can only be used as a mapping key; quote it for text", node)
        _tag_error(node, "scalar")
    try:
        return construct(node)
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        _fail(f"cannot read {node.value!r} as {_short_tag(tag)}", node)


def _key(node: Node) -> str | int:
    """Python value of a mapping key node that is not a plain string."""
    if type(node) is not ScalarNode:
        _fail("mapping keys must be plain values, not a mapping or a list", node)
    key = _scalar(node)
    if isinstance(key, str | int):  # bool is an int
        return key
    what = "null" if key is None else type(key).__name__
    _fail(f"mapping key {node.value!r} is read as {what}; quote it to use it as text", node)


def _merge_sources(node: Node) -> list[Node]:
    """Mappings merged by a ``<<`` value, in list order (earlier ones win)."""
    ntype = type(node)
    if ntype is MappingNode:
        if node.tag != _MAP:
            _tag_error(node, "mapping")
        return [node]
    if ntype is SequenceNode:
        if node.tag != _SEQ:
            _tag_error(node, "list")
        items: list[Node] = node.value
        for item in items:
            if type(item) is not MappingNode:
                _fail("'<<' (merge key) lists may only contain mappings", item)
            if item.tag != _MAP:
                _tag_error(item, "mapping")
        return items
    _fail("the value of '<<' (merge key) must be a mapping or a list of mappings", node)


def _split_mapping(node: Node) -> tuple[dict[str | int, tuple[Node, Node]], list[Node]]:
    """Explicit entries (duplicate-checked) and merge sources of a mapping node."""
    explicit: dict[str | int, tuple[Node, Node]] = {}
    sources: list[Node] = []
    merge_key: Node | None = None
    for knode, vnode in node.value:
        if type(knode) is ScalarNode and knode.tag == _MERGE:
            if merge_key is not None:
                _fail(f"duplicate key '<<' (first at line {merge_key.start_mark.line + 1})", knode)
            merge_key = knode
            sources = _merge_sources(vnode)
            continue
        key = knode.value if type(knode) is ScalarNode and knode.tag == _STR else _key(knode)
        first = explicit.get(key)
        if first is not None:
            _fail(
                f"duplicate key {knode.value!r} (first at line {first[0].start_mark.line + 1})",
                knode,
            )
        explicit[key] = (knode, vnode)
    return explicit, sources


def _mapping_entries(node: Node, cache: dict[int, _Entries]) -> _Entries:
    """Effective ``(key, key node, value node)`` entries of a mapping, merges applied.

    Iterative so long merge chains cannot exhaust the Python stack; the caller has
    already ruled out cycles.
    """
    todo = [node]
    while todo:
        current = todo[-1]
        if id(current) in cache:
            todo.pop()
            continue
        explicit, sources = _split_mapping(current)
        pending = [source for source in sources if id(source) not in cache]
        if pending:
            todo.extend(pending)
            continue
        if sources:
            merged: dict[str | int, tuple[Node, Node]] = {}
            for source in sources:
                for key, knode, vnode in cache[id(source)]:
                    # YAML merge rule: a mapping earlier in the list wins.
                    if key not in merged:
                        merged[key] = (knode, vnode)
            merged.update(explicit)  # explicit keys override merged ones
            explicit = merged
        cache[id(current)] = [(key, kv[0], kv[1]) for key, kv in explicit.items()]
        todo.pop()
    return cache[id(node)]


def _check_expansion(root: Node, max_nodes: int) -> None:
    """Reject alias bombs and recursive aliases without expanding anything.

    Post-order walk over the *unique* nodes, memoizing each collection's expanded
    size by ``id(node)``; stops as soon as any node exceeds ``max_nodes``.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        nid = id(node)
        if finished:
            total = 1
            if type(node) is MappingNode:
                for knode, vnode in node.value:
                    total += 1 if type(knode) is ScalarNode else sizes[id(knode)]
                    total += 1 if type(vnode) is ScalarNode else sizes[id(vnode)]
            else:
                for item in node.value:
                    total += 1 if type(item) is ScalarNode else sizes[id(item)]
            if total > max_nodes:
                start = root.start_mark
                raise YamlLoadError(
                    f"document expands to more than {max_nodes:,} nodes through aliases "
                    "(a YAML alias bomb?)",
                    line=start.line + 1,
                    column=start.column + 1,
                )
            sizes[nid] = total
            active.discard(nid)
            continue
        if nid in sizes:
            continue
        if nid in active:
            # Only ancestors of the current path are active: the node contains itself.
            _fail("recursive alias: this node contains an alias to itself", node)
        active.add(nid)
        stack.append((node, True))
        children = (
            [n for pair in node.value for n in pair] if type(node) is MappingNode else node.value
        )
        for child in children:
            if type(child) is not ScalarNode and id(child) not in sizes:
                stack.append((child, False))


def _convert(
    root: Node, limits: YamlLimits, careful: bool
) -> tuple[Any, dict[Loc, Position], dict[Loc, Position]]:
    """Turn a document's node graph into plain data plus positions.

    ``careful=False`` is the fast path for the usual tree-shaped document: it raises
    :class:`_NeedCareful` on the first merge key or second visit of a collection
    (an alias), because then expansion size and cycles must be checked first.
    """
    mark = root.start_mark
    values: dict[Loc, Position] = {(): (mark.line + 1, mark.column + 1)}
    keys: dict[Loc, Position] = {}
    if type(root) is ScalarNode:
        return _scalar(root), values, keys

    max_depth = limits.max_depth
    seen: set[int] = set()
    entries_cache: dict[int, _Entries] = {}
    stack: list[tuple[Node, Any, Loc, int]] = []

    def collection(node: Node, loc: Loc, depth: int) -> Any:
        """Empty container for a collection node, queued to be filled."""
        if depth > max_depth:
            _fail(f"nesting is deeper than the limit of {max_depth} levels", node)
        if not careful:
            nid = id(node)
            if nid in seen:
                raise _NeedCareful
            seen.add(nid)
        if type(node) is MappingNode:
            if node.tag != _MAP:
                _tag_error(node, "mapping")
            container: Any = {}
        else:
            if node.tag != _SEQ:
                _tag_error(node, "list")
            container = []
        stack.append((node, container, loc, depth))
        return container

    data = collection(root, (), 1)
    # Locals for the hot loop (this walk runs for every node of every manifest).
    scalar_node, sequence_node, str_tag, merge_tag = ScalarNode, SequenceNode, _STR, _MERGE
    scalar, key_of = _scalar, _key
    while stack:
        node, container, loc, depth = stack.pop()
        depth += 1
        queued = len(stack)
        if type(node) is sequence_node:
            append = container.append
            for index, vnode in enumerate(node.value):
                child = (*loc, index)
                mark = vnode.start_mark
                values[child] = (mark.line + 1, mark.column + 1)
                if type(vnode) is scalar_node:
                    append(vnode.value if vnode.tag == str_tag else scalar(vnode))
                else:
                    append(collection(vnode, child, depth))
        elif careful:
            entries = entries_cache.get(id(node))
            if entries is None:
                entries = _mapping_entries(node, entries_cache)
            for key, knode, vnode in entries:
                child = (*loc, key)
                mark = knode.start_mark
                keys[child] = (mark.line + 1, mark.column + 1)
                mark = vnode.start_mark
                values[child] = (mark.line + 1, mark.column + 1)
                if type(vnode) is scalar_node:
                    container[key] = vnode.value if vnode.tag == str_tag else scalar(vnode)
                else:
                    container[key] = collection(vnode, child, depth)
        else:
            for knode, vnode in node.value:
                if type(knode) is scalar_node and knode.tag == str_tag:
                    key = knode.value
                elif type(knode) is scalar_node and knode.tag == merge_tag:
                    raise _NeedCareful
                else:
                    key = key_of(knode)
                child = (*loc, key)
                if key in container:
                    first = keys[child][0]
                    _fail(f"duplicate key {knode.value!r} (first at line {first})", knode)
                mark = knode.start_mark
                keys[child] = (mark.line + 1, mark.column + 1)
                mark = vnode.start_mark
                values[child] = (mark.line + 1, mark.column + 1)
                if type(vnode) is scalar_node:
                    container[key] = vnode.value if vnode.tag == str_tag else scalar(vnode)
                else:
                    container[key] = collection(vnode, child, depth)
        if len(stack) - queued > 1:
            # Fill sibling collections in document order so the first error wins.
            stack[queued:] = stack[queued:][::-1]
    return data, values, keys


def _build_document(index: int, root: Node, limits: YamlLimits) -> YamlDocument:
    try:
        data, values, keys = _convert(root, limits, careful=False)
        nodes = len(values) + len(keys)
        if nodes > limits.max_nodes:
            _fail(
                f"document has {nodes:,} nodes, more than the limit of {limits.max_nodes:,}",
                root,
            )
    except _NeedCareful:
        _check_expansion(root, limits.max_nodes)
        data, values, keys = _convert(root, limits, careful=True)
    mark = root.start_mark
    return YamlDocument(
        index=index,
        data=data,
        start=(mark.line + 1, mark.column + 1),
        value_positions=MappingProxyType(values),
        key_positions=MappingProxyType(keys),
    )


def _is_document_start(line: str) -> bool:
    return line.startswith("---") and (len(line) == 3 or line[3] in " \t")


def _empty_document_position(
    lines: list[str], root: Node, previous_end: tuple[int, int], first: bool
) -> Position:
    """Line of the ``---`` that opened an empty document, or the best fallback.

    Only the lines between the previous document and this one are searched, so a
    file of many empty documents stays linear.
    """
    mark = root.start_mark
    prev_line, prev_column = previous_end
    lowest = prev_line if prev_column == 0 else prev_line + 1
    highest = mark.line if mark.column >= 3 else mark.line - 1
    for number in range(min(highest, len(lines) - 1), lowest - 1, -1):
        if _is_document_start(lines[number]):
            return (number + 1, 1)
    if first and not root.value:
        return (1, 1)
    return (mark.line + 1, mark.column + 1)


def _position_in(text: str) -> Position:
    """1-based position just after ``text`` (a prefix of the file)."""
    line_start = text.rfind("\n") + 1
    return (text.count("\n") + 1, len(text) - line_start + 1)


def _char_at(text: str, line: int, column: int) -> str:
    """Character at a 0-based mark position ("" if out of range)."""
    lines = _LINE_BREAKS.split(text)
    if 0 <= line < len(lines) and 0 <= column < len(lines[line]):
        return lines[line][column]
    return ""


def _from_marked(exc: yaml.MarkedYAMLError, text: str) -> YamlLoadError:
    problem, context = exc.problem, exc.context
    mark = exc.problem_mark or exc.context_mark
    message = problem or context or "invalid YAML"
    if problem and context:
        where = exc.context_mark
        if where is not None and mark is not None and where.line != mark.line:
            context = f"{context} at line {where.line + 1}, column {where.column + 1}"
        message = f"{problem} ({context})"
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        message += "; a tab was found here: indent YAML with spaces, not tabs"
    if exc.note:
        message = f"{message}; {exc.note}"
    if mark is None:
        return YamlLoadError(message)
    return YamlLoadError(message, line=mark.line + 1, column=mark.column + 1)


def _from_reader(exc: yaml.reader.ReaderError, source: bytes | str) -> YamlLoadError:
    if isinstance(exc.position, int):
        # libyaml reports a byte offset into the bytes, the pure-Python reader a
        # character index into the text: both are offsets into what it was given.
        prefix = source[: exc.position]
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8", "replace")
        line, column = _position_in(prefix)
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return YamlLoadError(f"{exc.reason} ({shown})", line=line, column=column)
    return YamlLoadError(str(exc))


def load_documents(data: bytes, *, limits: YamlLimits = DEFAULT_LIMITS) -> YamlLoad:
    """Load every document of a YAML file given as bytes.

    Raises :class:`YamlLoadError` (with a 1-based position when known) if the file is
    too big, not UTF-8, not valid YAML, uses non-data tags, has duplicate keys, is
    nested too deeply or expands too much through aliases.
    """
    if len(data) > limits.max_bytes:
        raise YamlLoadError(
            f"file is {len(data):,} bytes, more than the limit of {limits.max_bytes:,} bytes; "
            "raise limits.maxManifestBytes in the repo config .reconciler.yaml, "
            "or split the file into smaller files",
            line=1,
            column=1,
        )
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position_in(body[: exc.start].decode("utf-8"))
        raise YamlLoadError(
            f"file is not valid UTF-8 (byte 0x{body[exc.start]:02x} at line {line}, "
            f"column {column}); save it as UTF-8",
            line=line,
            column=column,
        ) from exc

    documents: list[YamlDocument] = []
    notes: list[YamlNote] = []
    count = 0
    previous_end = (0, 0)
    lines: list[str] = []  # split lazily: only needed for empty documents
    # libyaml reads the bytes directly (no re-encoding); the fallback wants text.
    source: bytes | str = text if _LOADER is yaml.SafeLoader else body
    try:
        for index, root in enumerate(yaml.compose_all(source, Loader=_LOADER)):
            count = index + 1
            if type(root) is ScalarNode and root.tag == _NULL:
                if not lines:
                    lines = _LINE_BREAKS.split(text)
                line, column = _empty_document_position(lines, root, previous_end, index == 0)
                notes.append(
                    YamlNote(line, column, f"document {count} is empty or only comments; skipped")
                )
            else:
                documents.append(_build_document(index, root, limits))
            end = root.end_mark
            previous_end = (end.line, end.column)
    except yaml.MarkedYAMLError as exc:
        raise _from_marked(exc, text) from exc
    except yaml.reader.ReaderError as exc:
        raise _from_reader(exc, source) from exc
    except yaml.YAMLError as exc:
        raise YamlLoadError(f"invalid YAML: {exc}") from exc
    except RecursionError as exc:  # only the pure-Python fallback composer recurses
        raise YamlLoadError(
            f"nesting is deeper than the limit of {limits.max_depth} levels"
        ) from exc
    if count == 0:
        notes.append(YamlNote(1, 1, "file contains no YAML documents (empty or only comments)"))
    return YamlLoad(documents=tuple(documents), notes=tuple(notes))
