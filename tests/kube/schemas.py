"""Offline validation of Kubernetes objects, close to what the API server accepts.

``validate_object`` checks one object and returns its problems (``[]`` when it
is valid):

- built-in kinds against the strict OpenAPI schemas bundled with
  ``kubernetes_validate`` (unknown fields fail) for ``KUBE_VERSION``;
  CustomResourceDefinitions are built-in objects too, and additionally get the
  API server's CRD checks (structural schema, names, printer columns);
- ``reconciler.dev`` kinds against the ``openAPIV3Schema`` of the matching CRD
  in ``deploy/crds``, translated from the Kubernetes OpenAPI dialect to JSON
  Schema 2020-12: ``nullable``, ``x-kubernetes-preserve-unknown-fields``,
  ``x-kubernetes-int-or-string`` and ``x-kubernetes-list-type`` are honoured,
  ``format: date-time`` is checked (RFC 3339 with a time zone offset), and
  unknown fields fail where the schema does not preserve them (the API server
  would silently prune them, or reject them under strict field validation);
- for every object, ``metadata`` against ObjectMeta, its name against the
  kind's naming rule, and label and annotation keys and values.

Two Kubernetes behaviours are mirrored on purpose: ``null`` fails a field that
has an ``enum``, even a ``nullable`` one (kube-openapi checks the enum of a null
value), and a non-nullable field set to ``null`` fails.

The module also renders the kustomizations in ``deploy/`` (``kustomize_build``)
and summarizes the RBAC they grant (``rbac_grants``), so that tests can compare
the grants with the requests the code makes.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils
import yaml
from packaging.version import Version
from referencing import Registry, Resource

# The Kubernetes version objects are validated for by default; the newest
# bundled version (LATEST_KUBE_VERSION) is worth checking too, for removed APIs.
KUBE_VERSION = "1.34.0"
LATEST_KUBE_VERSION: str = str(kubernetes_validate.utils.latest_version())

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"
CRD_DIR = DEPLOY / "crds"

_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META = f"{_DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

_CLUSTER_SCOPED = frozenset(
    {
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PriorityClass",
        "StorageClass",
        "ValidatingWebhookConfiguration",
    }
)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def validate_object(obj: Mapping[str, Any], *, version: str = KUBE_VERSION) -> list[str]:
    """Every problem of ``obj`` as ``"<path>: <message>"``; ``[]`` when it is valid."""
    if not isinstance(obj, Mapping):
        return [f"<root>: an object is a mapping, not {type(obj).__name__}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return ["apiVersion: required, a string such as 'v1' or 'apps/v1'"]
    if not isinstance(kind, str) or not kind:
        return ["kind: required, a string such as 'ConfigMap'"]
    group = api_version.rpartition("/")[0]
    problems = _metadata_problems(obj, kind, version)
    crd = _crds_by_kind().get((group, kind))
    if crd is not None:
        problems += _custom_object_problems(obj, crd)
    elif group in _crd_groups():
        problems.append(f"kind: no CRD in deploy/crds defines kind {kind!r} in group {group!r}")
    else:
        problems += _builtin_problems(obj, version)
        if kind == "CustomResourceDefinition" and group == "apiextensions.k8s.io":
            problems += crd_problems(obj)
    return problems


def assert_valid(obj: Mapping[str, Any], *, version: str = KUBE_VERSION) -> None:
    """Raise AssertionError naming the object and listing its problems, if any."""
    problems = validate_object(obj, version=version)
    if problems:
        raise AssertionError(
            f"{describe(obj)} is invalid for Kubernetes {version}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the storage version of the CRD in deploy/crds for ``kind``."""
    for (_group, crd_kind), crd in _crds_by_kind().items():
        if crd_kind == kind:
            return copy.deepcopy(_storage_version(crd)["schema"]["openAPIV3Schema"])
    raise KeyError(f"no CRD in {CRD_DIR} defines kind {kind!r}")


def crd_documents() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in deploy/crds, as loaded from the files."""
    return [copy.deepcopy(crd) for crd in _crds_by_kind().values()]


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` (or ``Kind name``) for messages."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    namespace = meta.get("namespace")
    where = f"{namespace}/{name}" if namespace else str(name)
    return f"{obj.get('kind', '<no kind>')} {where}"


def kustomize_build(directory: str | Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize <directory>`` renders (cached; copies returned)."""
    return copy.deepcopy(list(_kustomize_build(str(Path(directory).resolve()))))


def rbac_grants(
    objects: Iterable[Mapping[str, Any]],
) -> dict[str, dict[tuple[str, str], frozenset[str]]]:
    """Verbs per (apiGroup, resource), merged over the ClusterRoles and over the Roles.

    ``{"ClusterRole": {("batch", "jobs"): frozenset({"get", ...}), ...}, "Role": {...}}``;
    a rule with several groups or resources counts for each combination.
    """
    grants: dict[str, dict[tuple[str, str], frozenset[str]]] = {"ClusterRole": {}, "Role": {}}
    for obj in objects:
        kind = obj.get("kind")
        if kind not in grants or obj.get("apiVersion") != "rbac.authorization.k8s.io/v1":
            continue
        for rule in obj.get("rules") or ():
            verbs = frozenset(rule.get("verbs") or ())
            for group in rule.get("apiGroups") or ():
                for resource in rule.get("resources") or ():
                    key = (group, resource)
                    grants[kind][key] = grants[kind].get(key, frozenset()) | verbs
    return grants


# ---------------------------------------------------------------------------
# CRD checks (what the API server checks when a CRD is created)
# ---------------------------------------------------------------------------

_FORBIDDEN_SCHEMA_KEYS = (
    "$ref",
    "$schema",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
    "id",
)
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")
_PRINTER_TYPES = frozenset({"integer", "number", "string", "boolean", "date"})


def crd_problems(crd: Mapping[str, Any]) -> list[str]:
    """Problems the API server would report for a CRD beyond its OpenAPI shape."""
    problems: list[str] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group", ""), names.get("plural", "")
    name = (crd.get("metadata") or {}).get("name")
    if name != f"{plural}.{group}":
        problems.append(f"metadata.name: must be spec.names.plural.spec.group ({plural}.{group})")
    if not _is_subdomain(group) or "." not in group:
        problems.append(f"spec.group: {group!r} must be a DNS subdomain with at least one dot")
    for field in ("plural", "singular", "listKind", "kind"):
        value = names.get(field)
        if field in ("plural", "singular") and value is not None and not _is_label(value):
            problems.append(f"spec.names.{field}: {value!r} must be a lower-case DNS label")
        if (
            field in ("kind", "listKind")
            and value is not None
            and not re.match(r"^[A-Z]\w*$", value)
        ):
            problems.append(f"spec.names.{field}: {value!r} must be CamelCase")
    for i, short in enumerate(names.get("shortNames") or ()):
        if not _is_label(short):
            problems.append(f"spec.names.shortNames[{i}]: {short!r} must be a DNS label")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append("spec.scope: must be Namespaced or Cluster")
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        problems.append("spec.versions: exactly one version must have storage: true")
    seen: set[str] = set()
    for i, version in enumerate(versions):
        where = f"spec.versions[{i}]"
        if version.get("name") in seen:
            problems.append(f"{where}.name: duplicate version {version.get('name')!r}")
        seen.add(version.get("name"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, Mapping):
            problems.append(f"{where}.schema.openAPIV3Schema: required (a structural schema)")
        else:
            problems += structural_problems(schema, f"{where}.schema.openAPIV3Schema")
        for j, column in enumerate(version.get("additionalPrinterColumns") or ()):
            cwhere = f"{where}.additionalPrinterColumns[{j}]"
            if column.get("type") not in _PRINTER_TYPES:
                problems.append(f"{cwhere}.type: must be one of {sorted(_PRINTER_TYPES)}")
            if not str(column.get("jsonPath", "")).startswith("."):
                problems.append(f"{cwhere}.jsonPath: must start with '.'")
    return problems


def structural_problems(schema: Mapping[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    """Why ``schema`` is not a structural schema usable by an apiextensions.k8s.io/v1 CRD."""
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append(f"{path}.type: the root must be of type object")
    _check_node(schema, path, problems, in_junctor=False, root=True)
    metadata = (schema.get("properties") or {}).get("metadata")
    if isinstance(metadata, Mapping):
        extra = set(metadata) - {"type", "properties", "description"}
        fields = set(metadata.get("properties") or {}) - {"name", "generateName"}
        if metadata.get("type") != "object" or extra or fields:
            problems.append(
                f"{path}.properties.metadata: only type: object and restrictions of "
                "name and generateName are allowed"
            )
    return problems


def _check_node(
    node: Any, path: str, problems: list[str], *, in_junctor: bool, root: bool = False
) -> None:
    if not isinstance(node, Mapping):
        problems.append(f"{path}: a schema is a mapping")
        return
    for key in _FORBIDDEN_SCHEMA_KEYS:
        if key in node:
            problems.append(f"{path}.{key}: not allowed in a CRD schema")
    if node.get("uniqueItems") is True:
        problems.append(f"{path}.uniqueItems: may not be true (use x-kubernetes-list-type: set)")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is not None and preserve is not True:
        problems.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or absent")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if in_junctor:
        for key in _NOT_IN_JUNCTORS:
            if key in node:
                problems.append(f"{path}.{key}: not allowed inside allOf/anyOf/oneOf/not")
    elif not root and not node.get("type") and not preserve and not int_or_string:
        problems.append(f"{path}.type: required (or x-kubernetes-preserve-unknown-fields)")
    if int_or_string and node.get("type"):
        problems.append(f"{path}.type: must be empty with x-kubernetes-int-or-string")
    if node.get("nullable") and "enum" in node:
        problems.append(
            f"{path}: enum with nullable: true; the API server rejects null for an enum field"
        )
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}.additionalProperties: may not be false")
    if isinstance(node.get("items"), list):
        problems.append(f"{path}.items: must be a single schema")
    if "items" in node and node.get("type") not in (None, "array"):
        problems.append(f"{path}.items: only for type array")
    if node.get("type") == "array" and "items" not in node and not in_junctor:
        problems.append(f"{path}.items: required for type array")
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        if list_type not in ("atomic", "set", "map"):
            problems.append(f"{path}.x-kubernetes-list-type: must be atomic, set or map")
        if node.get("type") != "array":
            problems.append(f"{path}.x-kubernetes-list-type: only for type array")
    keys = node.get("x-kubernetes-list-map-keys")
    if list_type == "map":
        items = node.get("items") or {}
        required = set(items.get("required") or ())
        if not keys:
            problems.append(f"{path}.x-kubernetes-list-map-keys: required with list-type map")
        for key in keys or ():
            prop = (items.get("properties") or {}).get(key)
            if prop is None:
                problems.append(f"{path}.x-kubernetes-list-map-keys: {key!r} is not a property")
            elif key not in required and "default" not in prop:
                problems.append(f"{path}: map key {key!r} must be required or have a default")
    elif keys is not None:
        problems.append(f"{path}.x-kubernetes-list-map-keys: only with list-type map")
    if node.get("x-kubernetes-embedded-resource") and node.get("type") != "object":
        problems.append(f"{path}.x-kubernetes-embedded-resource: only for type object")
    for name, child in (node.get("properties") or {}).items():
        _check_node(child, f"{path}.properties.{name}", problems, in_junctor=in_junctor)
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        _check_node(additional, f"{path}.additionalProperties", problems, in_junctor=in_junctor)
    if isinstance(node.get("items"), Mapping):
        _check_node(node["items"], f"{path}.items", problems, in_junctor=in_junctor)
    for junctor in _JUNCTORS:
        children = node.get(junctor)
        if junctor == "not" and children is not None:
            children = [children]
        for i, child in enumerate(children or ()):
            _check_node(child, f"{path}.{junctor}[{i}]", problems, in_junctor=True)


# ---------------------------------------------------------------------------
# custom objects
# ---------------------------------------------------------------------------


def _custom_object_problems(obj: Mapping[str, Any], crd: Mapping[str, Any]) -> list[str]:
    spec = crd["spec"]
    version_name = str(obj["apiVersion"]).rpartition("/")[2]
    versions = {v["name"]: v for v in spec["versions"]}
    version = versions.get(version_name)
    if version is None or not version.get("served"):
        served = [name for name, v in versions.items() if v.get("served")]
        return [f"apiVersion: {spec['group']}/{version_name} is not served; served: {served}"]
    problems: list[str] = []
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and spec["scope"] == "Cluster" and meta.get("namespace"):
        problems.append("metadata.namespace: the kind is cluster-scoped")
    validator = _crd_validator(spec["group"], spec["names"]["kind"], version_name)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    problems += _errors(validator, body)
    return problems


@functools.cache
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    crd = _crds_by_kind()[(group, kind)]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]
    converted = _to_json_schema(schema["openAPIV3Schema"], in_junctor=False)
    converted.setdefault("properties", {}).pop("metadata", None)
    converted["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    _CrdValidator.check_schema(converted)
    return _CrdValidator(converted, format_checker=_FORMATS)


_COPIED_KEYWORDS = (
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "format",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def _to_json_schema(node: Mapping[str, Any], *, in_junctor: bool) -> dict[str, Any]:
    """One Kubernetes OpenAPI v3 schema node as JSON Schema 2020-12."""
    out: dict[str, Any] = {k: copy.deepcopy(node[k]) for k in _COPIED_KEYWORDS if k in node}
    kind = node.get("type")
    nullable = bool(node.get("nullable"))
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("x-kubernetes-int-or-string"):
        choices: list[dict[str, Any]] = [{"type": "integer"}, {"type": "string"}]
        if nullable:
            choices.append({"type": "null"})
        out["anyOf"] = choices
    elif kind:
        out["type"] = [kind, "null"] if nullable else kind
    if node.get("exclusiveMaximum") is True and "maximum" in out:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("exclusiveMinimum") is True and "minimum" in out:
        out["exclusiveMinimum"] = out.pop("minimum")
    if "properties" in node:
        out["properties"] = {
            name: _to_json_schema(child, in_junctor=in_junctor)
            for name, child in node["properties"].items()
        }
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        out["additionalProperties"] = _to_json_schema(additional, in_junctor=in_junctor)
    elif additional is not None:
        out["additionalProperties"] = additional
    elif kind == "object" and not preserve and not in_junctor:
        out["additionalProperties"] = False  # the API server would prune (drop) the field
    if isinstance(node.get("items"), Mapping):
        out["items"] = _to_json_schema(node["items"], in_junctor=in_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        if junctor in node and not node.get("x-kubernetes-int-or-string"):
            out[junctor] = [_to_json_schema(s, in_junctor=True) for s in node[junctor]]
    if "not" in node:
        out["not"] = _to_json_schema(node["not"], in_junctor=True)
    return out


def _list_type(
    validator: jsonschema.protocols.Validator,
    list_type: str,
    instance: Any,
    schema: Mapping[str, Any],
) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    seen: set[str] = set()
    keys = list(schema.get("x-kubernetes-list-map-keys") or ())
    for item in instance:
        if list_type == "set":
            identity = json.dumps(item, sort_keys=True)
            shown = repr(item)
        elif isinstance(item, Mapping):
            values = {k: item.get(k) for k in keys}
            identity, shown = json.dumps(values, sort_keys=True), json.dumps(values)
        else:
            continue
        if identity in seen:
            yield jsonschema.ValidationError(f"duplicate entry {shown} (x-kubernetes-list-type)")
        seen.add(identity)


_CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
)

_FORMATS = jsonschema.FormatChecker(formats=())
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@_FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _RFC3339.match(value)
    if match is None:
        return False
    date, time, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        dt.datetime.fromisoformat(f"{date}T{time}{fraction}{zone}")
    except ValueError:
        return False
    return True


@_FORMATS.checks("date")
def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value))


@_FORMATS.checks("int32")
def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


# ---------------------------------------------------------------------------
# built-in kinds (kubernetes_validate's strict schemas)
# ---------------------------------------------------------------------------


def _builtin_problems(obj: Mapping[str, Any], version: str) -> list[str]:
    validator = _builtin_validator(_schema_dir(version), str(obj["kind"]), str(obj["apiVersion"]))
    if validator is None:
        return [
            f"kind: no schema for {obj['kind']} {obj['apiVersion']} in Kubernetes "
            f"{_schema_version(version)} (removed, misspelled or not a built-in kind)"
        ]
    return _errors(validator, obj)


def _schema_version(version: str) -> str:
    wanted = Version(version.removeprefix("v"))
    candidates = [
        v
        for v in kubernetes_validate.utils.all_versions()
        if Version(v).release[:2] <= wanted.release[:2]
    ]
    if not candidates:
        raise ValueError(f"kubernetes_validate has no schemas for Kubernetes {version}")
    newest = candidates[-1]
    if Version(newest).release[:2] != wanted.release[:2]:
        raise ValueError(
            f"kubernetes_validate has no schemas for Kubernetes {version}; "
            f"it bundles {kubernetes_validate.utils.all_versions()}"
        )
    return str(newest)


def _schema_dir(version: str) -> str:
    return f"v{_schema_version(version)}-local-strict"


def _schema_file(schema_dir: str, name: str) -> Any:
    path = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", schema_dir)
    file = path.joinpath(name)
    if not file.is_file():
        return None
    return json.loads(file.read_text())


@functools.cache
def _registry(schema_dir: str) -> Registry:
    definitions = _schema_file(schema_dir, "_definitions.json")
    return Resource.from_contents(definitions) @ Registry()


@functools.cache
def _builtin_validator(
    schema_dir: str, kind: str, api_version: str
) -> jsonschema.protocols.Validator | None:
    # rbac.authorization.k8s.io/v1 -> rbac-v1, apps/v1 -> apps-v1, v1 -> v1
    slug = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = _schema_file(schema_dir, f"{kind.lower()}-{slug}.json")
    if schema is None:
        return None
    registry = Resource.from_contents(schema) @ _registry(schema_dir)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _object_meta_validator(schema_dir: str) -> jsonschema.protocols.Validator:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": _OBJECT_META}
    return jsonschema.Draft202012Validator(schema, registry=_registry(schema_dir))


# ---------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ANNOTATIONS_LIMIT = 256 * 1024


def _is_label(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_LABEL.match(value))


def _is_subdomain(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= 253
        and all(_LABEL.match(part) for part in value.split("."))
    )


def _name_problem(kind: str, name: str) -> str | None:
    if kind == "Namespace":
        ok, rule = _is_label(name), "a DNS-1123 label"
    elif kind == "Service":
        ok, rule = len(name) <= 63 and bool(_DNS1035.match(name)), "a DNS-1035 label"
    elif kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        ok = name not in (".", "..") and "/" not in name and "%" not in name
        rule = "a path segment (no '/' or '%')"
    else:
        ok, rule = _is_subdomain(name), "a DNS-1123 subdomain"
    return None if ok else f"metadata.name: {name!r} is not {rule}"


def _qualified_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or not _is_subdomain(prefix)):
        return f"prefix {prefix!r} of {key!r} is not a DNS subdomain"
    if len(name) > 63 or not _QUALIFIED.match(name):
        return f"{key!r} is not a qualified name (63 characters: alphanumerics, '-', '_', '.')"
    return None


def _metadata_problems(obj: Mapping[str, Any], kind: str, version: str) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ["metadata: required, a mapping with at least a name"]
    problems = _errors(_object_meta_validator(_schema_dir(version)), meta, "metadata")
    name = meta.get("name")
    if isinstance(name, str):
        problem = _name_problem(kind, name)
        if problem:
            problems.append(problem)
    elif not meta.get("generateName"):
        problems.append("metadata.name: required")
    namespace = meta.get("namespace")
    if namespace is not None:
        if kind in _CLUSTER_SCOPED:
            problems.append(f"metadata.namespace: {kind} is cluster-scoped")
        elif not _is_label(namespace):
            problems.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    labels = meta.get("labels")
    if isinstance(labels, Mapping):
        for key, value in labels.items():
            problem = _qualified_key_problem(str(key))
            if problem:
                problems.append(f"metadata.labels: {problem}")
            if not isinstance(value, str) or (
                value and (len(value) > 63 or not _QUALIFIED.match(value))
            ):
                problems.append(
                    f"metadata.labels.{key}: {value!r} is not a label value "
                    "(a string of at most 63 alphanumerics, '-', '_', '.')"
                )
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping):
        size = 0
        for key, value in annotations.items():
            problem = _qualified_key_problem(str(key))
            if problem:
                problems.append(f"metadata.annotations: {problem}")
            size += len(str(key)) + len(str(value))
        if size > _ANNOTATIONS_LIMIT:
            problems.append(f"metadata.annotations: {size} bytes, more than 256 KiB")
    return problems


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _errors(
    validator: jsonschema.protocols.Validator, instance: Any, prefix: str = ""
) -> list[str]:
    problems = []
    errors = validator.iter_errors(instance)
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        message = error.message
        if error.context:
            best = jsonschema.exceptions.best_match(error.context)
            if best is not None:
                message = f"{message}; {_path(best.absolute_path, prefix)}: {best.message}"
        problems.append(f"{_path(error.absolute_path, prefix)}: {message}")
    return problems


def _path(path: Iterable[Any], prefix: str = "") -> str:
    text = prefix
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


@functools.cache
def _crds_by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    crds: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted(CRD_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                spec = document["spec"]
                crds[(spec["group"], spec["names"]["kind"])] = document
    return crds


@functools.cache
def _crd_groups() -> frozenset[str]:
    return frozenset(group for group, _kind in _crds_by_kind())


def _storage_version(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(v for v in crd["spec"]["versions"] if v.get("storage"))


@functools.cache
def _kustomize_build(directory: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH; it renders the kustomizations")
    result = subprocess.run(
        [kubectl, "kustomize", directory],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)
