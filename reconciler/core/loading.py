"""From file bytes to validated Workflows, with every problem placed at FILE:LINE:COL.

``load_manifest_file`` is pure in its inputs (path, bytes, workspace,
variables, limits), so callers may cache its result by blob id.
``combine_files`` joins per-file results and finds names defined twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from reconciler.core.fastyaml import load_plain
from reconciler.core.manifests import Workflow
from reconciler.core.names import WorkflowKey, workflow_key
from reconciler.core.problems import Finding, Loc, Problem, render_loc
from reconciler.core.repoconfigs import CONFIG_FILE, RepoConfig
from reconciler.core.suggestions import findings_from_validation_error
from reconciler.core.validating import check_workflow
from reconciler.core.variables import substitute_variables
from reconciler.core.yamldocs import YamlDocument, YamlLimits, YamlLoadError, load_documents


@dataclass(frozen=True)
class LoadedWorkflow:
    """A valid Workflow and where it came from."""

    key: WorkflowKey
    workspace: str
    path: str
    document: int
    line: int
    manifest: Workflow


@dataclass(frozen=True)
class FileLoad:
    """What one file held: its valid workflows, its errors and notes."""

    path: str
    workflows: tuple[LoadedWorkflow, ...] = ()
    errors: tuple[Problem, ...] = ()
    notes: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class ManifestSet:
    """Every workflow of a source, plus every problem; complete only without errors."""

    workflows: Mapping[WorkflowKey, LoadedWorkflow] = field(default_factory=dict)
    errors: tuple[Problem, ...] = ()
    notes: tuple[Problem, ...] = ()
    files: int = 0

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def failed_paths(self) -> frozenset[str]:
        return frozenset(p.path for p in self.errors)


def load_manifest_file(
    path: str,
    data: bytes,
    *,
    workspace: str,
    variables: Mapping[str, str],
    max_bytes: int = 1 << 20,
) -> FileLoad:
    """Parse, substitute and validate every document of one manifest file."""
    limits = YamlLimits(max_bytes=max_bytes)
    # Fast path: the common valid one-document file, parsed by yaml_rs. Any file it
    # cannot vouch for, and any file with a problem, takes the slow path below, which
    # places every problem at its line.
    plain = load_plain(data, limits=limits)
    if plain is not None:
        found = _plain_workflow(path, data, plain, workspace=workspace, variables=variables)
        if found is not None:
            return FileLoad(path, (found,))
    try:
        loaded = load_documents(data, limits=limits)
    except YamlLoadError as exc:
        return FileLoad(path, errors=(_load_problem(path, exc),))
    notes = tuple(
        Problem(path, n.line, n.column, "", n.message, severity="note") for n in loaded.notes
    )
    workflows: list[LoadedWorkflow] = []
    errors: list[Problem] = []
    for document in loaded.documents:
        manifest, findings = validate_document(
            document,
            variables,
            substitute=b"$" in data,
            # a NUL only gets in through an escape ("\0", "\x00"...) or a variable
            check_nul=b"\\" in data or any("\0" in value for value in variables.values()),
        )
        errors += [_place(path, document, f) for f in findings]
        if manifest is not None:
            workflows.append(
                LoadedWorkflow(
                    key=workflow_key(workspace, manifest.name),
                    workspace=workspace,
                    path=path,
                    document=document.index,
                    line=document.start[0],
                    manifest=manifest,
                )
            )
    return FileLoad(path, tuple(workflows), tuple(errors), notes)


def _plain_workflow(
    path: str,
    data: bytes,
    plain: tuple[object, int],
    *,
    workspace: str,
    variables: Mapping[str, str],
) -> LoadedWorkflow | None:
    """The workflow of a file read by the fast path; ``None`` if it has any problem."""
    document, line = plain
    manifest, findings = validate_data(
        document,
        variables,
        substitute=b"$" in data,
        check_nul=b"\\" in data or any("\0" in value for value in variables.values()),
    )
    if manifest is None or findings:
        return None
    return LoadedWorkflow(
        key=workflow_key(workspace, manifest.name),
        workspace=workspace,
        path=path,
        document=0,
        line=line,
        manifest=manifest,
    )


def _load_problem(path: str, exc: YamlLoadError) -> Problem:
    """The file could not be loaded; where, or line 1 when YAML could not say (every
    problem has a FILE:LINE)."""
    if exc.line is None:
        return Problem(path, 1, None, "", exc.message)
    return Problem(path, exc.line, exc.column, "", exc.message)


def validate_document(
    document: YamlDocument,
    variables: Mapping[str, str],
    *,
    substitute: bool = True,
    check_nul: bool = True,
) -> tuple[Workflow | None, list[Finding]]:
    """A Workflow when the document is valid; otherwise every finding.

    ``substitute=False`` skips the ``${NAME}`` pass (the file holds no ``$``);
    ``check_nul=False`` the search for NUL characters (the file holds no escape).
    """
    return validate_data(document.data, variables, substitute=substitute, check_nul=check_nul)


def validate_data(
    data: object,
    variables: Mapping[str, str],
    *,
    substitute: bool = True,
    check_nul: bool = True,
) -> tuple[Workflow | None, list[Finding]]:
    """:func:`validate_document` for a document's data alone."""
    if not isinstance(data, dict):
        kind = type(data).__name__
        return None, [
            Finding((), f"a manifest is a mapping with version, name, type and spec, not a {kind}")
        ]
    if substitute:
        data, findings = substitute_variables(data, variables)
        if findings:
            return None, findings
    if check_nul and (findings := _nul_findings(data)):
        return None, findings
    try:
        manifest = Workflow.model_validate(data, context={"defer_semantics": True})
    except ValidationError as exc:
        return None, findings_from_validation_error(exc, Workflow)
    findings = check_workflow(manifest)
    return (None, findings) if findings else (manifest, [])


_NUL_MESSAGE = (
    "contains a NUL character ('\\0'), which no command, argument, environment variable or "
    "path can hold; remove it"
)


def _nul_findings(data: object) -> list[Finding]:
    """A finding for every key and text holding a NUL: a process could not be started with it."""
    findings: list[Finding] = []
    todo: list[tuple[object, Loc]] = [(data, ())]
    while todo:
        node, loc = todo.pop()
        if isinstance(node, str):
            if "\0" in node:
                findings.append(Finding(loc, _NUL_MESSAGE))
        elif isinstance(node, dict):
            children: list[tuple[object, Loc]] = []
            for key, value in node.items():
                if isinstance(key, str) and "\0" in key:
                    findings.append(Finding((*loc, key), _NUL_MESSAGE, at_key=True))
                children.append((value, (*loc, key)))
            todo.extend(reversed(children))  # document order
        elif isinstance(node, list):
            todo.extend(reversed([(value, (*loc, index)) for index, value in enumerate(node)]))
    return findings


def _place(path: str, document: YamlDocument, finding: Finding) -> Problem:
    written = _as_written(document.data, finding.loc)
    line, column = document.position_of(written, prefer_key=finding.at_key)
    return Problem(path, line, column, render_loc(finding.loc), finding.message)


_YAML11_BOOL_KEYS = {"on": True, "yes": True, "off": False, "no": False}


def _as_written(data: object, loc: Loc) -> Loc:
    """``loc`` with the keys YAML 1.1 read as booleans (a bare ``on:`` is ``True``) as such.

    A model may accept ``on`` for such a key; its position is under ``True``.
    """
    parts: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and isinstance(part, str) and part not in data:
            flag = _YAML11_BOOL_KEYS.get(part)
            if flag is not None and any(key is flag for key in data):
                part = flag  # a bool: the key the position map holds
        parts.append(part)
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            data = None
    return tuple(parts)


def combine_files(loads: Iterable[FileLoad]) -> ManifestSet:
    """Join per-file results; a name defined twice in a workspace fails both places."""
    by_key: dict[WorkflowKey, list[LoadedWorkflow]] = {}
    errors: list[Problem] = []
    notes: list[Problem] = []
    files = 0
    for load in loads:
        files += 1
        errors += load.errors
        notes += load.notes
        for workflow in load.workflows:
            by_key.setdefault(workflow.key, []).append(workflow)
    workflows: dict[WorkflowKey, LoadedWorkflow] = {}
    for key, defined in by_key.items():
        if len(defined) == 1:
            workflows[key] = defined[0]
            continue
        places = [f"{w.path}:{w.line}" for w in defined]
        for workflow in defined:
            others = ", ".join(p for p in places if p != f"{workflow.path}:{workflow.line}")
            errors.append(
                Problem(
                    workflow.path,
                    workflow.line,
                    1,
                    "name",
                    f"workflow {workflow.manifest.name!r} in workspace {workflow.workspace!r} "
                    f"is also defined at {others}; names must be unique per workspace",
                )
            )
    return ManifestSet(workflows, tuple(sorted(errors)), tuple(sorted(notes)), files)


def load_repo_config(
    data: bytes | None, *, path: str = CONFIG_FILE
) -> tuple[RepoConfig, tuple[Problem, ...]]:
    """The repo config from its bytes (None: no file, defaults); problems when invalid."""
    if data is None:
        return RepoConfig(), ()
    try:
        loaded = load_documents(data)
    except YamlLoadError as exc:
        return RepoConfig(), (_load_problem(path, exc),)
    if not loaded.documents:
        return RepoConfig(), ()
    if len(loaded.documents) > 1:
        line = loaded.documents[1].start[0]
        return RepoConfig(), (Problem(path, line, 1, "", "the repo config is one document"),)
    document = loaded.documents[0]
    if not isinstance(document.data, dict):
        return RepoConfig(), (Problem(path, 1, 1, "", "the repo config must be a mapping"),)
    try:
        return RepoConfig.model_validate(document.data), ()
    except ValidationError as exc:
        findings = findings_from_validation_error(exc, RepoConfig)
        return RepoConfig(), tuple(_place(path, document, f) for f in findings)


def load_manifest_set(
    files: Mapping[str, bytes],
    *,
    config: RepoConfig,
    variables: Mapping[str, str],
) -> ManifestSet:
    """Load every manifest file of a tree (paths relative to the repo config's directory)."""
    return combine_files(
        load_manifest_file(
            path,
            data,
            workspace=config.workspaces.workspace_for(path),
            variables=variables,
            max_bytes=config.limits.max_manifest_bytes,
        )
        for path, data in sorted(files.items())
    )
