"""The DataOS ``v2alpha`` Workflow manifest as frozen pydantic models.

These are wire models: they mirror the YAML field for field (camelCase
aliases), reject unknown fields and carry no IO. Field formats (names,
quantities, crons, time zones) are checked here; rules that span fields
(DAG shape, requests within limits, template scopes) live in ``validating``
so that each problem can be reported at its own line. ``Workflow`` runs those
rules in its model validator too, so a Workflow built in code is always
valid; the loader defers them (``context={"defer_semantics": True}``) to
report every problem with its position instead of the first one.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from reconciler.core import crons, names, quantities
from reconciler.core.durations import parse_duration
from reconciler.core.problems import render_loc

SUPPORTED_VERSIONS = ("v2alpha",)
MAX_TEXT = 4096


class WireModel(BaseModel):
    """Base of every manifest model: camelCase on the wire, frozen, strict about fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        str_strip_whitespace=False,
    )


def _checked(check: Any) -> AfterValidator:
    """Turn a ``check_*`` function returning an error message or None into a validator."""

    def validate(value: Any) -> Any:
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _label(what: str, limit: int = names.MAX_LABEL) -> AfterValidator:
    return _checked(lambda v: names.check_label(v, limit=limit, what=what))


def _quantity_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _check_quantity(value: str) -> str | None:
    try:
        quantities.parse_nonnegative_quantity(value)
    except quantities.QuantityError as exc:
        return str(exc)
    return None


def _check_timezone(value: str) -> str | None:
    if not value or value != value.strip() or value.startswith(("/", ".")) or ".." in value:
        return f"{value!r} is not an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        import difflib

        close = difflib.get_close_matches(value, sorted(available_timezones()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " such as 'UTC' or 'Europe/Berlin'"
        return f"unknown time zone {value!r}{hint}"
    return None


def _check_directory(value: str) -> str | None:
    if not value.startswith("/"):
        return f"directory {value!r} must be an absolute path such as /workspace"
    if ".." in value.split("/"):
        return f"directory {value!r} must not contain '..'"
    if posixpath.normpath(value) != value:
        return f"directory {value!r} is not normalized; write {posixpath.normpath(value)!r}"
    if value == "/":
        return "a volume cannot be mounted at '/'; choose a directory such as /workspace"
    return None


def _check_duration(value: str) -> str | None:
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_version(value: str) -> str | None:
    if value in SUPPORTED_VERSIONS:
        return None
    return f"unsupported version {value!r}; supported: {', '.join(SUPPORTED_VERSIONS)}"


def _check_text_line(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if "\n" in value:
        return "must be a single line"
    return None


WorkflowName = Annotated[str, _label("workflow name", names.MAX_WORKFLOW_NAME)]
StepName = Annotated[str, _label("step name", names.MAX_STEP_NAME)]
ResourceName = Annotated[str, _label("name")]
VolumeId = Annotated[str, _label("volume id")]
SecretId = Annotated[str, _label("secret id")]
ComputeName = Annotated[str, _label("compute")]
WorkspaceName = Annotated[str, _label("workspace")]
Quantity = Annotated[str, BeforeValidator(_quantity_text), _checked(_check_quantity)]
TimeZone = Annotated[str, _checked(_check_timezone)]
CronExpression = Annotated[str, _checked(crons.check_cron)]
Directory = Annotated[str, _checked(_check_directory)]
Duration = Annotated[str, _checked(_check_duration)]
EnvName = Annotated[str, _checked(lambda v: names.check_identifier(v, what="env var name"))]
Alias = Annotated[str, _checked(lambda v: names.check_identifier(v, what="contextAlias"))]
Tag = Annotated[str, Field(max_length=253), _checked(_check_text_line)]


class SecretProjection(WireModel):
    """A secret made available to templates as ``{{.secrets.<contextAlias>.<KEY>}}``."""

    id: SecretId
    context_alias: Alias | None = Field(
        default=None,
        description="Name used in templates; defaults to the id with '-' replaced by '_'.",
    )

    @property
    def alias(self) -> str:
        return self.context_alias or self.id.replace("-", "_")


class EnvVar(WireModel):
    """An environment variable; ``value`` may hold ``{{ ... }}`` projection templates."""

    key: EnvName
    value: str = Field(max_length=MAX_TEXT * 8)


class Projections(WireModel):
    env_vars: tuple[EnvVar, ...] = ()


class Projection(WireModel):
    """Secrets and runtime configuration injected into steps."""

    secrets: tuple[SecretProjection, ...] = ()
    projections: Projections = Projections()


class WorkflowUse(WireModel):
    projection: Projection | None = None


class Dependency(WireModel):
    """A prerequisite checked before a run starts (see docs: ``spec.dependencies``).

    Exactly one of ``workflow`` or ``volume`` names the resource. A workflow
    dependency is met when that workflow's latest run ``succeeded`` (within
    ``within`` if given) or, with ``condition: active``, when it is applied
    and not suspended. A volume dependency is met when the volume exists.
    Until met the run stays ``pending``; after ``timeout`` it fails.
    """

    workflow: WorkflowName | None = None
    volume: VolumeId | None = None
    workspace: WorkspaceName | None = None
    condition: Literal["succeeded", "active"] = "succeeded"
    within: Duration | None = None
    timeout: Duration = "1h"

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        # "workflow:ingest" or "volume:shared" as a plain string.
        if isinstance(data, str):
            kind, sep, name = data.partition(":")
            if sep and kind in ("workflow", "volume") and name:
                return {kind: name}
            raise ValueError(
                f"{data!r} is not a dependency; write 'workflow:NAME', 'volume:ID' "
                "or a mapping such as {workflow: NAME, within: 24h}"
            )
        return data

    @model_validator(mode="after")
    def _one_resource(self) -> Dependency:
        given = [k for k in ("workflow", "volume") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of 'workflow' or 'volume'")
        if self.volume is not None and (
            self.workspace is not None or self.within is not None or self.condition != "succeeded"
        ):
            raise ValueError("'workspace', 'condition' and 'within' apply to workflow dependencies")
        if self.within is not None and self.condition != "succeeded":
            raise ValueError("'within' applies to condition 'succeeded' only")
        return self


class Schedule(WireModel):
    """When the Workflow runs by itself."""

    crons: tuple[CronExpression, ...] = Field(min_length=1)
    timezone: TimeZone = "UTC"
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Allow"


class ResourceAmounts(WireModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(WireModel):
    requests: ResourceAmounts | None = None
    limits: ResourceAmounts | None = None


class Volume(WireModel):
    """A persistent volume shared by steps, mounted at ``directory``."""

    id: VolumeId
    directory: Directory
    read_only: bool = False


class StepUse(WireModel):
    volumes: tuple[Volume, ...] = ()
    projection: Projection | None = None


class StepSpec(WireModel):
    """What a step runs and with what. No ``stack`` makes a no-op step."""

    compute: ComputeName | None = None
    resources: Resources | None = None
    run_as_user: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] | None = None
    use: StepUse | None = None
    stack: str | None = None
    stack_spec: dict[str, Any] | None = None


class Step(WireModel):
    name: StepName
    title: Annotated[str, Field(max_length=253)] | None = None
    depends: tuple[str, ...] = ()
    spec: StepSpec = StepSpec()


class WorkflowSpec(WireModel):
    type: Literal["instance"] = "instance"
    use: WorkflowUse | None = None
    dependencies: tuple[Dependency, ...] = ()
    schedule: Schedule | None = None
    dag: tuple[Step, ...] = Field(min_length=1)


class Workflow(WireModel):
    """One Workflow manifest (``type: workflow``)."""

    version: Annotated[str, _checked(_check_version)]
    name: WorkflowName
    type: Literal["workflow"]
    tags: tuple[Tag, ...] = ()
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    spec: WorkflowSpec

    @model_validator(mode="after")
    def _semantics(self, info: ValidationInfo) -> Workflow:
        if isinstance(info.context, dict) and info.context.get("defer_semantics"):
            return self
        from reconciler.core.validating import check_workflow

        problems = check_workflow(self)
        if problems:
            raise ValueError("; ".join(f"{render_loc(p.loc)}: {p.message}" for p in problems))
        return self

    def step(self, name: str) -> Step:
        for step in self.spec.dag:
            if step.name == name:
                return step
        raise KeyError(name)

    def depends_map(self) -> dict[str, tuple[str, ...]]:
        return {step.name: step.depends for step in self.spec.dag}


def normalized_spec(workflow: Workflow) -> dict[str, Any]:
    """The manifest with every default filled in, as plain JSON-able data."""
    return workflow.model_dump(mode="json", by_alias=True)


def normalized_spec_json(workflow: Workflow) -> str:
    """:func:`normalized_spec` as JSON text (compact, keys in model order)."""
    return workflow.model_dump_json(by_alias=True)


def without_nulls(value: Any) -> Any:
    """The data with every null mapping value left out (what a server may drop anyway)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def renormalized(data: Any) -> dict[str, Any]:
    """A normalized spec again, from a stored copy that may have lost its nulls.

    Normalizing is idempotent, so the result equals the spec that was stored.
    Raises ValueError naming the problem when the stored copy is no manifest
    (edited by hand, say).
    """
    try:
        return normalized_spec(Workflow.model_validate(data))
    except ValidationError as exc:
        raise ValueError(f"the stored manifest is not a valid Workflow: {exc}") from exc
