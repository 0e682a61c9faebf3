"""A local Kubernetes API server for the tests: real HTTP on 127.0.0.1, official-client compatible.

``KubeEmulator`` keeps objects in memory and serves them the way a real API server does
(resourceVersion, generation, 404/409/410/422 Status bodies with the real reasons and
messages, label/field selectors, pagination, watches from a resourceVersion, merge / JSON /
server-side-apply patches, the status subresource, cascading deletes) and simulates the job
controller and the kubelet for ``batch/v1`` Jobs. Faults (``inject``), RBAC denials (``deny``)
and watch-history loss (``compact``) can be staged by the tests.

Built on kmock (``kmock.KubernetesEmulator``, as the project brief asks)
--------------------------------------------------------------------------
Reused: the class is a ``kmock.KubernetesEmulator``; kmock's aiohttp handler protocol (the
instance is the aiohttp request handler), its aiohttp test-server plumbing
(``aiohttp.test_utils.RawTestServer``, which ``kmock.Server`` also uses), its API discovery
endpoints (``/api``, ``/api/v1``, ``/apis``, ``/apis/G``, ``/apis/G/V``, ``/version``, served
from kmock's ``resources`` registry, which ``add_resource`` fills) and its request DSL for every
non-resource URL (``kube['get /healthz'] << b'ok'`` works).

Replaced, and why:

- ``kmock.Server``: it patches aiohttp's DNS resolver for the whole process (a class
  attribute, restorable only in LIFO order, which breaks with servers started and stopped
  from several threads) and opens an aiohttp client session nobody here needs (the clients
  are the official ``kubernetes`` client over urllib3). ``start()`` runs ``RawTestServer``
  itself in a daemon thread with its own event loop.
- kmock's URL parsing (``parsing.parse_path``/``guess_k8s``), hence ``__call__`` for resource
  URLs: it fails on the ``namespaces`` resource itself (``/api/v1/namespaces`` raises,
  ``/api/v1/namespaces/NAME`` is read as a namespace with no resource), knows only
  ``watch=true`` (not ``watch=1``) and maps PATCH to "update" and PUT to nothing.
- kmock's object store and verbs (``KubernetesEmulator._handle``, ``k8s_dicts``): no uid,
  resourceVersion or generation, every write is a dict merge, no PUT, a 409 with a
  non-Kubernetes reason, watches with no resourceVersion, history, selectors, timeouts or
  410, and error bodies carrying Python tracebacks instead of real ``Status`` details.

So resource URLs (``/api/v1/...``, ``/apis/G/V/...`` with a resource) are served here;
everything else goes to kmock unchanged (its error rendering is overridden to real
``Status`` bodies).

Thread safety: every piece of state is guarded by one ``threading.RLock``; request handlers
take it only for short synchronous sections, never across an ``await``. Watch streams are fed
through per-watch queues woken with ``loop.call_soon_threadsafe``, so the test thread can
write (``put``, ``finish_job``) while streams are open.

Deliberate simplifications (see ``KubeEmulator`` for the list of what is emulated):
strategic-merge patches are JSON merge patches (lists are replaced, not merged by key);
server-side apply tracks only Apply managers (fields written by PUT/merge patches have no
owner, so they never conflict and are never removed by an applier); CEL rules
(``x-kubernetes-validations``) and ``format`` are not checked; one Pod per Job, no
``backoffLimit`` retries, ``parallelism``, ``activeDeadlineSeconds`` or pod restarts.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import re
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import jsonpatch
import jsonschema
import kmock
import kubernetes.client
import yaml

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace or "", name)
JobOutcome = Callable[[Obj], tuple[int, str]]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet
SERVICE_ACCOUNT = "system:serviceaccount:test:reconciler"  # the user named in 403 messages

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

MSG_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
MSG_NAMESPACE_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- errors ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cause:
    field: str
    message: str
    reason: str = "FieldValueInvalid"


class ApiError(Exception):
    """An answer with a v1 Status body: raised anywhere while serving, rendered by the handler."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Obj | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = dict(headers or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.status(), status=self.code, headers=self.headers)


def _not_served() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", details={})


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def _name_mismatch(in_body: Any, in_url: str) -> ApiError:
    return _bad_request(
        f"the name of the object ({in_body}) does not match the name on the URL ({in_url})"
    )


def _invalid(kind_name: str, name: str, group: str, kind: str, causes: list[Cause]) -> ApiError:
    parts = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        f'{kind_name} "{name}" is invalid: {joined}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
            ],
        },
    )


# -- resources -------------------------------------------------------------------------------


@dataclasses.dataclass
class ResourceDef:
    """One served group/version/resource."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    schema: Obj | None = None  # openAPIV3Schema of this version
    custom: bool = False  # served from a CustomResourceDefinition (PUT needs a resourceVersion)
    extra_subresources: frozenset[str] = frozenset()  # e.g. {"log"} for pods
    validator: jsonschema.protocols.Validator | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.schema is not None:
            self.validator = jsonschema.Draft4Validator(openapi_to_jsonschema(self.schema))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def full_name(self) -> str:
        """As messages name the resource: ``jobs.batch``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_name(self) -> str:
        """As 422 messages name the kind: ``Job.batch``, ``Pod``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def gp(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def subresources(self) -> frozenset[str]:
        return self.extra_subresources | ({"status"} if self.status_subresource else set())


@dataclasses.dataclass(frozen=True)
class Route:
    """A parsed resource URL and its Kubernetes verb."""

    verb: str
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_route(method: str, path: str, query: Mapping[str, str]) -> Route | None:
    """Like the apiserver's RequestInfo: None for non-resource URLs (discovery and others)."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    watching = query.get("watch", "").lower() in ("true", "1")
    method = method.upper()
    if method == "GET":
        verb = "watch" if watching else ("get" if name is not None else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name is not None else "deletecollection"
    else:
        verb = method.lower()
    return Route(verb, group, version, plural, namespace, name, subresource)


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it; ``status`` is filled when it is answered."""

    method: str
    path: str
    query: dict[str, str]
    verb: str
    group: str | None
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None
    content_type: str = ""
    status: int = 0


@dataclasses.dataclass
class Fault:
    verb: str | None
    plural: str | None
    name: str | None
    subresource: str | None
    status: int
    times: int
    retry_after: float | None
    delay: float
    message: str | None

    def matches(self, verb: str, plural: str | None, name: str | None, sub: str | None) -> bool:
        return (
            self.times > 0
            and (self.verb is None or self.verb == verb)
            and (self.plural is None or self.plural == plural)
            and (self.name is None or self.name == name)
            and (self.subresource is None or self.subresource == sub)
        )


# -- selectors -------------------------------------------------------------------------------


class SelectorError(ValueError):
    pass


_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "exists", "!exists", "=", "!=", "in", "notin"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        return not present or value not in self.values  # notin


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_label_selector(text: str) -> list[LabelRequirement]:
    requirements: list[LabelRequirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise SelectorError(f"unable to parse requirement: {part!r}: empty value set")
            req = LabelRequirement(m.group(1), m.group(2), values)
        elif m := re.fullmatch(r"!\s*(\S+)", part):
            req = LabelRequirement(m.group(1), "!exists")
        elif m := re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(\S*)", part):
            op = "!=" if m.group(2) == "!=" else "="
            req = LabelRequirement(m.group(1), op, (m.group(3),))
        elif re.fullmatch(r"[^=!\s(),]+", part):
            req = LabelRequirement(part, "exists")
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        if not _LABEL_KEY.fullmatch(req.key):
            raise SelectorError(f"unable to parse requirement: invalid label key {req.key!r}")
        for value in req.values:
            if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
        requirements.append(req)
    return requirements


# Field selectors the apiserver supports, per resource (plural -> field -> path in the object).
_COMMON_FIELDS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
}
_EXTRA_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "events": {
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
        "reason": ("reason",),
        "reportingComponent": ("reportingComponent",),
        "source": ("source", "component"),
        "type": ("type",),
    },
    "pods": {
        "spec.nodeName": ("spec", "nodeName"),
        "spec.restartPolicy": ("spec", "restartPolicy"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
        "status.phase": ("status", "phase"),
    },
    "namespaces": {"status.phase": ("status", "phase")},
    "secrets": {"type": ("type",)},
}


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        current: Any = obj
        for part in self.path:
            current = current.get(part) if isinstance(current, dict) else None
        actual = "" if current is None else str(current)
        return (actual == self.value) == self.equal


def parse_field_selector(text: str, plural: str) -> list[FieldRequirement]:
    supported = dict(_COMMON_FIELDS) | _EXTRA_FIELDS.get(plural, {})
    requirements: list[FieldRequirement] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise SelectorError(f"invalid selector: '{part}'; can't understand '{part}'")
        field, op, value = m.group(1), m.group(2), m.group(3).strip()
        if field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append(FieldRequirement(supported[field], op != "!=", value))
    return requirements


@dataclasses.dataclass(frozen=True)
class Selector:
    namespace: str | None
    labels: tuple[LabelRequirement, ...]
    fields: tuple[FieldRequirement, ...]

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(
            f.matches(obj) for f in self.fields
        )


# -- patches and server-side apply -----------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; never mutates its arguments."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def deep_merge(base: Obj, config: Obj) -> None:
    """Server-side apply's merge, in place: maps merge, lists and scalars replace, null removes."""
    for key, value in config.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def remove_unapplied(target: Obj, previous: Obj, current: Obj, others: list[Obj]) -> None:
    """Drop from ``target`` what ``previous`` applied, ``current`` no longer does and no
    other apply manager owns (maps recursively; lists are atomic)."""
    for key, prev_value in previous.items():
        owners = [o[key] for o in others if isinstance(o, dict) and key in o]
        if key not in current:
            if not owners:
                target.pop(key, None)
            elif (
                isinstance(prev_value, dict)
                and isinstance(target.get(key), dict)
                and all(isinstance(o, dict) for o in owners)
            ):
                remove_unapplied(target[key], prev_value, {}, owners)
        elif (
            isinstance(prev_value, dict)
            and isinstance(current[key], dict)
            and isinstance(target.get(key), dict)
        ):
            remove_unapplied(target[key], prev_value, current[key], owners)


def leaf_paths(config: Obj, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from leaf_paths(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def get_path(obj: Any, path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def drop_path(obj: Obj, path: tuple[str, ...]) -> None:
    parent: Any = obj
    for part in path[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


_MISSING = object()


def fields_v1(config: Obj) -> Obj:
    """The managedFields FieldsV1 shape of an applied config (lists atomic)."""
    return {f"f:{k}": fields_v1(v) if isinstance(v, dict) else {} for k, v in config.items()}


# -- CRD schemas -----------------------------------------------------------------------------

_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_SKIPPED = ("nullable", "default", "description", "example", "externalDocs", "format")


def openapi_to_jsonschema(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as draft-4 JSON Schema (nullable, int-or-string)."""
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: openapi_to_jsonschema(v) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [openapi_to_jsonschema(v) for v in value]
        elif key in ("items", "additionalProperties", "not"):
            out[key] = openapi_to_jsonschema(value)
        elif key.startswith("x-kubernetes-") or key in _SCHEMA_SKIPPED:
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def prune_and_default(value: Any, schema: Any, *, root: bool = False) -> Any:
    """Structural-schema pruning of unknown fields and defaulting, like the apiserver."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = root or schema.get("x-kubernetes-embedded-resource") is True
        if isinstance(props, dict):
            for key, sub in props.items():
                if key not in value and isinstance(sub, dict) and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
        for key in list(value):
            if embedded and key in ("apiVersion", "kind", "metadata"):
                continue
            if isinstance(props, dict) and key in props:
                value[key] = prune_and_default(value[key], props[key])
            elif isinstance(additional, dict):
                value[key] = prune_and_default(value[key], additional)
            elif additional is True or preserve:
                continue
            else:
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(item, schema["items"]) for item in value]
    return value


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_causes(validator: jsonschema.protocols.Validator, obj: Obj) -> list[Cause]:
    causes: list[Cause] = []
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        path = _field_path(error.absolute_path)
        shown = json.dumps(error.instance)
        if error.validator == "required":
            m = re.search(r"'(.+)' is a required property", error.message)
            missing = m.group(1) if m else "?"
            causes.append(
                Cause(
                    f"{path}.{missing}" if path else missing, "Required value", "FieldValueRequired"
                )
            )
        elif error.validator == "enum":
            supported = ", ".join(json.dumps(v) for v in error.validator_value)
            causes.append(
                Cause(
                    path,
                    f"Unsupported value: {shown}: supported values: {supported}",
                    "FieldValueNotSupported",
                )
            )
        elif error.validator == "type":
            wanted = error.validator_value
            wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
            causes.append(
                Cause(
                    path,
                    f"Invalid value: {shown}: {path} in body must be of type {wanted}: {shown}",
                )
            )
        else:
            causes.append(Cause(path, f"Invalid value: {shown}: {error.message}"))
    return causes


# -- built-in validation ---------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_MSG_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_MSG_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_MSG_NAME_PART = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


def _name_causes(name: str, field: str, *, label: bool) -> list[Cause]:
    limit, pattern, message = (
        (63, _DNS_LABEL, _MSG_LABEL) if label else (253, _DNS_SUBDOMAIN, _MSG_SUBDOMAIN)
    )
    causes = []
    if len(name) > limit:
        causes.append(
            Cause(
                field, f"Invalid value: {json.dumps(name)}: must be no more than {limit} characters"
            )
        )
    if not pattern.fullmatch(name):
        causes.append(Cause(field, f"Invalid value: {json.dumps(name)}: {message}"))
    return causes


def _qualified_key_causes(key: str, field: str) -> list[Cause]:
    shown = json.dumps(key)
    prefix, _, name = key.rpartition("/")
    causes = []
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        causes.append(Cause(field, f"Invalid value: {shown}: prefix part {_MSG_SUBDOMAIN}"))
    if len(name) > 63:
        causes.append(
            Cause(field, f"Invalid value: {shown}: name part must be no more than 63 characters")
        )
    if not _QUALIFIED_NAME.fullmatch(name):
        causes.append(Cause(field, f"Invalid value: {shown}: {_MSG_NAME_PART}"))
    return causes


def metadata_causes(obj: Obj, *, label_name: bool) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes = _name_causes(str(meta.get("name", "")), "metadata.name", label=label_name)
    for key, value in (meta.get("labels") or {}).items():
        causes += _qualified_key_causes(str(key), "metadata.labels")
        if not isinstance(value, str):
            causes.append(
                Cause("metadata.labels", f"Invalid value: {json.dumps(value)}: must be a string")
            )
            continue
        if len(value) > 63:
            causes.append(
                Cause(
                    "metadata.labels",
                    f"Invalid value: {json.dumps(value)}: must be no more than 63 characters",
                )
            )
        if not _LABEL_VALUE.fullmatch(value):
            causes.append(
                Cause("metadata.labels", f"Invalid value: {json.dumps(value)}: {_MSG_LABEL_VALUE}")
            )
    for key in meta.get("annotations") or {}:
        causes += _qualified_key_causes(str(key), "metadata.annotations")
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not (ref or {}).get(field):
                causes.append(
                    Cause(
                        f"metadata.ownerReferences[{i}].{field}",
                        "Required value",
                        "FieldValueRequired",
                    )
                )
    return causes


def pod_spec_causes(spec: Any, path: str) -> list[Cause]:
    if not isinstance(spec, dict):
        return [Cause(path, "Required value", "FieldValueRequired")]
    containers = spec.get("containers") or []
    if not containers:
        return [Cause(f"{path}.containers", "Required value", "FieldValueRequired")]
    causes = []
    for i, container in enumerate(containers):
        where = f"{path}.containers[{i}]"
        name = (container or {}).get("name")
        if not name:
            causes.append(Cause(f"{where}.name", "Required value", "FieldValueRequired"))
        else:
            causes += _name_causes(str(name), f"{where}.name", label=True)
        if not (container or {}).get("image"):
            causes.append(Cause(f"{where}.image", "Required value", "FieldValueRequired"))
    return causes


# -- running a Job's container locally --------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` is a literal ``$``, unknown ``$(X)`` stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


SecretLookup = Callable[[str, str, str], str | None]


class ContainerConfigError(Exception):
    """The kubelet cannot build a container's environment (CreateContainerConfigError);
    ``str(exc)`` is the kubelet's message, e.g. ``secret "db" not found``."""


def container_env(
    job: Obj, secrets: SecretLookup, *, config_maps: SecretLookup | None = None
) -> dict[str, str]:
    """The first container's environment as the kubelet builds it from its ``env`` list.

    Plain values get ``$(VAR)`` expansion against the earlier entries; ``secretKeyRef`` goes
    through ``secrets(namespace, name, key)`` and ``configMapKeyRef`` through ``config_maps``
    (None: not found). A missing non-optional key raises ``ContainerConfigError``; lookups may
    raise it themselves for a more precise message (``secret "x" not found``).
    """
    namespace = (job.get("metadata") or {}).get("namespace") or "default"
    pod_spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod_spec.get("containers") or [{}]
    env: dict[str, str] = {}
    for entry in containers[0].get("env") or []:
        name = str(entry.get("name"))
        if "value" in entry:
            env[name] = expand(str(entry.get("value") or ""), env)
            continue
        source = entry.get("valueFrom") or {}
        for ref_field, lookup, kind in (
            ("secretKeyRef", secrets, "Secret"),
            ("configMapKeyRef", config_maps, "ConfigMap"),
        ):
            ref = source.get(ref_field)
            if ref is None:
                continue
            if lookup is None:
                raise ContainerConfigError(f"{ref_field} is not supported by this runner")
            ref_name, key = str(ref.get("name")), str(ref.get("key"))
            try:
                value = lookup(namespace, ref_name, key)
            except ContainerConfigError:
                if ref.get("optional"):
                    break
                raise
            if value is not None:
                env[name] = value
            elif not ref.get("optional"):
                raise ContainerConfigError(
                    f"couldn't find key {key} in {kind} {namespace}/{ref_name}"
                )
            break
        else:
            if source:
                raise ContainerConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
            env[name] = ""
    return env


def run_container_locally(
    job: Obj,
    secrets: SecretLookup,
    *,
    config_maps: SecretLookup | None = None,
    timeout: float = 30.0,
) -> tuple[int, str]:
    """Run the Job's first container ``command + args`` as a local process (cwd: a temporary
    directory; environment: PATH plus ``container_env``; ``$(VAR)`` expansion in command and
    args too). A missing secret or key fails with exit code 1 and a line naming it. Returns
    (exit code, stdout+stderr).
    """
    pod_spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        return 1, "Error: the pod has no containers\n"
    container = containers[0]
    try:
        env = container_env(job, secrets, config_maps=config_maps)
    except ContainerConfigError as exc:
        return 1, f"Error: {exc} (CreateContainerConfigError)\n"
    argv = [expand(str(a), env) for a in (container.get("command") or [])]
    argv += [expand(str(a), env) for a in (container.get("args") or [])]
    if not argv:
        return 1, "Error: the container has no command (image entrypoints are not emulated)\n"
    process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    with tempfile.TemporaryDirectory(prefix="kube-pod-") as workdir:
        try:
            done = subprocess.run(
                argv,
                env=process_env,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            return 128, f'exec: "{argv[0]}": executable file not found in $PATH\n'
        except subprocess.TimeoutExpired as exc:
            output = exc.output.decode(errors="replace") if exc.output else ""
            return 137, output + f"(killed after {timeout:g} s)\n"
    code = done.returncode if done.returncode >= 0 else 128 - done.returncode
    return code, done.stdout.decode(errors="replace")


class LocalOutcome:
    """A ``job_outcome`` running the container locally (``run_container_locally``).

    With ``hold_on_config_error`` its ``check(job)`` names what the kubelet could not resolve,
    and the simulation then holds the pod in Pending with CreateContainerConfigError (the Job
    stays active) as a real kubelet does, instead of failing it with exit code 1.
    """

    def __init__(
        self,
        secrets: SecretLookup,
        config_maps: SecretLookup | None = None,
        *,
        hold_on_config_error: bool = True,
    ) -> None:
        self.secrets = secrets
        self.config_maps = config_maps
        self.hold_on_config_error = hold_on_config_error

    def check(self, job: Obj) -> str | None:
        if not self.hold_on_config_error:
            return None
        try:
            container_env(job, self.secrets, config_maps=self.config_maps)
        except ContainerConfigError as exc:
            return str(exc)
        return None

    def __call__(self, job: Obj) -> tuple[int, str]:
        return run_container_locally(job, self.secrets, config_maps=self.config_maps)


# -- watches ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    gp: tuple[str, str]
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj  # the state after the change (for DELETED: the last state, new resourceVersion)
    old: Obj | None  # the state before (MODIFIED only)


class Watcher:
    def __init__(
        self, rd: ResourceDef, selector: Selector, bookmarks: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.rd = rd
        self.selector = selector
        self.bookmarks = bookmarks
        self.loop = loop
        self.pending: collections.deque[Event] = collections.deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.bookmark_requested = False

    def notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: the stream is ending anyway
            self.loop.call_soon_threadsafe(self.wake.set)

    def render(self, event_type: str, obj: Obj) -> Obj:
        return {"type": event_type, "object": render(obj, self.rd)}

    def translate(self, event: Event) -> Obj | None:
        """The event as this watch sees it (selectors turn MODIFIED into ADDED/DELETED)."""
        matches_new = self.selector.matches(event.obj)
        if event.type == "ADDED":
            return self.render("ADDED", event.obj) if matches_new else None
        if event.type == "DELETED":
            return self.render("DELETED", event.obj) if matches_new else None
        matches_old = event.old is not None and self.selector.matches(event.old)
        if matches_new and matches_old:
            return self.render("MODIFIED", event.obj)
        if matches_new:
            return self.render("ADDED", event.obj)
        if matches_old:
            return self.render("DELETED", event.obj)
        return None


def render(obj: Obj, rd: ResourceDef) -> Obj:
    """The stored object as served at ``rd``'s version (a shallow copy)."""
    out = dict(obj)
    out["apiVersion"] = rd.api_version
    out["kind"] = rd.kind
    return out


# -- the server ------------------------------------------------------------------------------

BUILTIN_RESOURCES: tuple[tuple[str, str, str, str, bool, bool], ...] = (
    # group, version, plural, kind, namespaced, status subresource
    ("", "v1", "namespaces", "Namespace", False, True),
    ("", "v1", "configmaps", "ConfigMap", True, False),
    ("", "v1", "secrets", "Secret", True, False),
    ("", "v1", "events", "Event", True, False),
    ("", "v1", "pods", "Pod", True, True),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, False),
    ("batch", "v1", "jobs", "Job", True, True),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, False),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        True,
    ),
)

JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
JOB_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")


class KubeEmulator(kmock.KubernetesEmulator):
    """An in-memory Kubernetes API server on 127.0.0.1 for the official client (see module doc).

    Public attributes: ``job_outcome`` (``(job) -> (exit code, log)``; None: Jobs never
    start), ``job_duration`` (seconds a simulated pod runs), ``bookmark_interval`` (idle
    seconds before a watch that allows bookmarks gets one).

    Note: kmock's HTTP-client shortcuts ``get``/``put`` are replaced by the store accessors
    below, and ``objects`` is a method here (kmock's property held kmock's own store).
    """

    job_duration: float
    job_outcome: JobOutcome | None
    bookmark_interval: float

    def __init__(self, *, history: int = 1000) -> None:
        super().__init__()
        self.job_outcome = None
        self.job_duration = 0.05
        self.bookmark_interval = 1.0
        self.base_url = ""
        self._history_size = history
        self._mutex = threading.RLock()  # replaces kmock's asyncio.Lock: shared with test threads
        self._rv = 1
        self._floor = 0  # a watch from a resourceVersion below this gets 410
        self._history: collections.deque[Event] = collections.deque()
        self._store: dict[Key, Obj] = {}
        self._defs: dict[tuple[str, str, str], ResourceDef] = {}
        self._applied: dict[Key, dict[tuple[str, str], tuple[Obj, str]]] = {}
        self._watchers: list[Watcher] = []
        self._records: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._denied: set[tuple[str, str, str, str | None]] = set()
        self._logs: dict[tuple[str, str], str] = {}
        self._waiting_pods: dict[tuple[str, str], str] = {}
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._job_pods: dict[str, Key] = {}
        self._sims_started: set[str] = set()
        self._waiting_jobs: list[tuple[Key, str]] = []
        self._internal_errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._running = False
        for group, version, plural, kind, namespaced, status in BUILTIN_RESOURCES:
            extra = frozenset({"log"}) if plural == "pods" else frozenset()
            self._register(
                ResourceDef(
                    group, version, plural, kind, namespaced, status, extra_subresources=extra
                )
            )
        self._put_locked({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 (a free port) from a daemon thread; the base URL."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready, failure), name="kube-emulator", daemon=True
        )
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("the Kubernetes emulator did not start within 15 s")
        if failure:
            raise RuntimeError("the Kubernetes emulator failed to start") from failure[0]
        return self.base_url

    def stop(self) -> None:
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is None or thread is None or stopping is None:
            return
        with self._mutex:
            self._running = False
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(15)
        if thread.is_alive():
            raise RuntimeError("the Kubernetes emulator did not stop within 15 s")
        self._thread = None

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve_forever(ready))
        except BaseException as exc:
            failure.append(exc)
            self._internal_errors.append(exc)
            log.exception("the Kubernetes emulator crashed")
        finally:
            ready.set()
            loop.close()

    async def _serve_forever(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        async with self:  # kmock: per-request error capture and its stream feeder
            server = aiohttp.test_utils.RawTestServer(self, host="127.0.0.1", port=0)
            await server.start_server()
            self.base_url = f"http://127.0.0.1:{server.port}"
            with self._mutex:
                self._running = True
                waiting, self._waiting_jobs = self._waiting_jobs, []
            for key, uid in waiting:
                self._spawn_job(key, uid)
            ready.set()
            await self._stopping.wait()
            self.close_watches()
            for task in list(self._job_tasks.values()):
                task.cancel()
            await asyncio.sleep(0.05)  # let the watch handlers end their streams
            await server.close()

    def __repr__(self) -> str:  # kmock's attrs repr dumps every reaction and request
        return f"<KubeEmulator {self.base_url or '(not started)'} rv={self._rv}>"

    @property
    def url(self) -> Any:  # kmock's property (it went through kmock.Server)
        return self.base_url

    @property
    def internal_errors(self) -> list[BaseException]:
        """Unexpected exceptions while serving (emulator bugs, crashing job_outcome calls)."""
        return list(self._internal_errors)

    def api_client(self) -> kubernetes.client.ApiClient:
        if not self.base_url:
            raise RuntimeError("start() the emulator first")
        configuration = kubernetes.client.Configuration(host=self.base_url)
        return kubernetes.client.ApiClient(configuration)

    # -- resources ------------------------------------------------------------------------

    def add_resource(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        status_subresource: bool = False,
        schema: Obj | None = None,
    ) -> None:
        self._register(
            ResourceDef(group, version, plural, kind, namespaced, status_subresource, schema)
        )

    def _register(self, rd: ResourceDef) -> None:
        with self._mutex:
            self._defs[(rd.group, rd.version, rd.plural)] = rd
            verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
            self.resources[kmock.resource(rd.group, rd.version, rd.plural)] = kmock.ResourceInfo(
                kind=rd.kind,
                namespaced=rd.namespaced,
                singular=rd.kind.lower(),
                verbs=verbs,
                subresources=set(rd.subresources),
            )

    def _unregister(self, group: str, plural: str) -> None:
        with self._mutex:
            for gvp in [k for k in self._defs if (k[0], k[2]) == (group, plural)]:
                del self._defs[gvp]
                resource = kmock.resource(*gvp)
                if resource in self.resources:
                    del self.resources[resource]

    def _def_for(self, gp: tuple[str, str]) -> ResourceDef:
        for (group, _, plural), rd in self._defs.items():
            if (group, plural) == gp:
                return rd
        raise KeyError(f"no resource {gp[1]}.{gp[0]} is registered")

    def _resolve(self, spec: str) -> ResourceDef:
        """``batch/v1/jobs``, ``v1/pods``, ``jobs.batch`` or a bare plural."""
        parts = spec.split("/")
        with self._mutex:
            if len(parts) == 3 and tuple(parts) in self._defs:
                return self._defs[(parts[0], parts[1], parts[2])]
            if len(parts) == 2 and ("", parts[0], parts[1]) in self._defs:
                return self._defs[("", parts[0], parts[1])]
            if len(parts) == 1:
                plural, _, group = spec.partition(".")
                found = [
                    rd
                    for rd in self._defs.values()
                    if rd.plural == plural and (not group or rd.group == group)
                ]
                groups = {rd.group for rd in found}
                if len(groups) == 1:
                    return found[0]
                if len(groups) > 1:
                    raise KeyError(f"{spec!r} is ambiguous: name it as plural.group")
        raise KeyError(f"no resource {spec!r} is registered")

    def _def_for_object(self, obj: Obj) -> ResourceDef:
        api_version = str(obj.get("apiVersion") or "")
        group, _, version = api_version.rpartition("/")
        kind = obj.get("kind")
        with self._mutex:
            for rd in self._defs.values():
                if (rd.group, rd.version, rd.kind) == (group, version, kind):
                    return rd
        raise KeyError(f"no resource serves {api_version} {kind}")

    def load_crds(self, paths: Iterable[Path]) -> None:
        """Register (and store) every CustomResourceDefinition in these YAML files."""
        for path in paths:
            for doc in yaml.safe_load_all(Path(path).read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    causes = self._crd_causes(doc)
                    if causes:
                        raise ValueError(f"{path}: invalid CRD: {causes}")
                    self._crd_defaults(doc)
                    self.put(doc)

    @staticmethod
    def _crd_causes(crd: Obj) -> list[Cause]:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        causes = []
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if (crd.get("metadata") or {}).get("name") != expected:
            causes.append(
                Cause(
                    "metadata.name",
                    f"Invalid value: {json.dumps((crd.get('metadata') or {}).get('name'))}: "
                    'must be spec.names.plural+"."+spec.group',
                )
            )
        if not names.get("kind"):
            causes.append(Cause("spec.names.kind", "Required value", "FieldValueRequired"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(
                Cause(
                    "spec.scope",
                    'Unsupported value: supported values: "Cluster", "Namespaced"',
                    "FieldValueNotSupported",
                )
            )
        if not spec.get("versions"):
            causes.append(Cause("spec.versions", "Required value", "FieldValueRequired"))
        return causes

    @staticmethod
    def _crd_defaults(crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind')}List")
        stamp = now_rfc3339()
        storage = [v.get("name") for v in spec.get("versions") or [] if v.get("storage")]
        crd["status"] = {
            "acceptedNames": names,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": stamp,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": stamp,
                },
            ],
            "storedVersions": storage,
        }

    def _register_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = str(spec.get("group")), str(names.get("plural"))
        self._unregister(group, plural)
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            self._register(
                ResourceDef(
                    group,
                    str(version.get("name")),
                    plural,
                    str(names.get("kind")),
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    status_subresource="status" in (version.get("subresources") or {}),
                    schema=schema,
                    custom=True,
                )
            )

    # -- test-side access -----------------------------------------------------------------

    def put(self, obj: Obj) -> Obj:  # type: ignore[override]
        """Create or replace an object as given (no validation); emits watch events."""
        with self._mutex:
            return copy.deepcopy(self._put_locked(copy.deepcopy(obj)))

    def _put_locked(self, obj: Obj) -> Obj:
        rd = self._def_for_object(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("put() needs metadata.name")
        if rd.namespaced:
            namespace = meta.setdefault("namespace", "default")
            if ("", "namespaces", "", namespace) not in self._store:
                self._put_locked(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                )
        else:
            meta.pop("namespace", None)
        key = self._key(rd, meta.get("namespace"), meta["name"])
        old = self._store.get(key)
        if old is None:
            self._builtin_defaults_on_create(rd, obj, trusted=True)
        meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp",
            (old or {}).get("metadata", {}).get("creationTimestamp") or now_rfc3339(),
        )
        if "generation" not in meta:
            generation = int((old or {}).get("metadata", {}).get("generation") or 1)
            if old is not None and _spec_part(old) != _spec_part(obj):
                generation += 1
            meta["generation"] = generation
        meta.pop("resourceVersion", None)
        if rd.plural == "secrets":
            _secret_string_data(obj)
        return self._commit(rd, key, obj, old)

    def get(self, group_version_plural: str, namespace: str | None, name: str) -> Obj | None:  # type: ignore[override]
        """The stored object (a copy), or None; the resource as ``batch/v1/jobs`` or ``jobs``."""
        rd = self._resolve(group_version_plural)
        with self._mutex:
            obj = self._store.get(self._key(rd, namespace, name))
            return copy.deepcopy(render(obj, rd)) if obj is not None else None

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:  # type: ignore[override]
        """Snapshot copies of every object of a resource (``jobs``, ``jobs.batch``)."""
        rd = self._resolve(plural)
        with self._mutex:
            return [
                copy.deepcopy(render(obj, rd))
                for key, obj in sorted(self._store.items())
                if key[:2] == rd.gp and (namespace is None or key[2] == namespace)
            ]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll until ``predicate()`` is truthy; its value. TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(0.01)

    # -- faults, RBAC, watch control ------------------------------------------------------

    def inject(
        self,
        *,
        verb: str | None = None,
        plural: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        message: str | None = None,
    ) -> None:
        """Fail (or with status=0 only delay) the next ``times`` matching requests."""
        with self._mutex:
            self._faults.append(
                Fault(verb, plural, name, subresource, status, times, retry_after, delay, message)
            )

    def deny(
        self, verb: str, plural: str, *, group: str = "", subresource: str | None = None
    ) -> None:
        """RBAC: ``verb`` on ``plural`` (in ``group``) is forbidden (403) from now on."""
        with self._mutex:
            self._denied.add((verb, group, plural, subresource))

    def allow(
        self, verb: str, plural: str, *, group: str = "", subresource: str | None = None
    ) -> None:
        """Undo ``deny``."""
        with self._mutex:
            self._denied.discard((verb, group, plural, subresource))

    def compact(self) -> None:
        """Forget the watch history: any older resourceVersion now gets 410 Expired."""
        with self._mutex:
            self._history.clear()
            self._floor = self._rv

    def close_watches(self) -> None:
        """End every open watch stream (clients must reconnect)."""
        with self._mutex:
            watchers = list(self._watchers)
            for watcher in watchers:
                watcher.closed = True
        for watcher in watchers:
            watcher.notify()

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK now to every watch that allows bookmarks."""
        with self._mutex:
            watchers = [w for w in self._watchers if w.bookmarks]
            for watcher in watchers:
                watcher.bookmark_requested = True
        for watcher in watchers:
            watcher.notify()

    @property
    def watch_count(self) -> int:
        """Open watch streams."""
        with self._mutex:
            return len(self._watchers)

    @property
    def resource_version(self) -> int:
        with self._mutex:
            return self._rv

    # -- request log ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far (a snapshot list)."""
        with self._mutex:
            return list(self._records)

    def count(
        self, *, verb: str | None = None, plural: str | None = None, write: bool | None = None
    ) -> int:
        with self._mutex:
            return sum(
                1
                for r in self._records
                if (verb is None or r.verb == verb)
                and (plural is None or r.plural == plural)
                and (write is None or (r.verb in WRITE_VERBS) == write)
            )

    def reset_counts(self) -> None:
        with self._mutex:
            self._records.clear()

    # -- Jobs -----------------------------------------------------------------------------

    def local_outcome(self, *, hold_on_config_error: bool = True) -> LocalOutcome:
        """A ``job_outcome`` that runs the container locally with this server's Secrets and
        ConfigMaps. A missing one holds the pod in CreateContainerConfigError (as a kubelet
        does) unless ``hold_on_config_error=False``: then the pod fails with exit code 1."""

        def lookup(plural: str) -> SecretLookup:
            def find(namespace: str, name: str, key: str) -> str | None:
                with self._mutex:
                    obj = self._store.get(("", plural, namespace, name))
                    if obj is None:
                        raise ContainerConfigError(f'{plural[:-1]} "{name}" not found')
                    value = (obj.get("data") or {}).get(key)
                if value is None:
                    return None
                return base64.b64decode(value).decode() if plural == "secrets" else str(value)

            return find

        return LocalOutcome(
            lookup("secrets"), lookup("configmaps"), hold_on_config_error=hold_on_config_error
        )

    def finish_job(self, namespace: str, name: str, exit_code: int, log: str = "") -> None:
        """Finish a Job now (creating its pod if it has none) with that exit code and log."""
        with self._mutex:
            key: Key = ("batch", "jobs", namespace, name)
            job = self._store.get(key)
            if job is None:
                raise KeyError(f'jobs.batch "{name}" not found in {namespace!r}')
            uid = job["metadata"]["uid"]
            task = self._job_tasks.pop(uid, None)
            if task is not None and self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(task.cancel)
            self._sims_started.add(uid)
            if uid not in self._job_pods or self._job_pods[uid] not in self._store:
                self._start_pod_locked(key)
            self._finish_locked(key, uid, exit_code, log)

    def _maybe_start_job(self, key: Key, job: Obj) -> None:
        """After a Job write: start its simulation once, unless finished/suspended/disabled."""
        uid = job["metadata"]["uid"]
        status = job.get("status") or {}
        if (
            self.job_outcome is None
            or uid in self._sims_started
            or (job.get("spec") or {}).get("suspend")
            or status.get("conditions")
            or status.get("active")
            or status.get("succeeded")
            or status.get("failed")
        ):
            return
        self._sims_started.add(uid)
        if self._running and self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn_job, key, uid)
        else:
            self._waiting_jobs.append((key, uid))

    def _spawn_job(self, key: Key, uid: str) -> None:
        assert self._loop is not None
        self._job_tasks[uid] = self._loop.create_task(self._run_job(key, uid))

    async def _run_job(self, key: Key, uid: str) -> None:
        try:
            with self._mutex:
                job = self._job_if_running(key, uid)
                if job is None:
                    return
                check = getattr(self.job_outcome, "check", None)
                held = check(copy.deepcopy(job)) if callable(check) else None
                self._start_pod_locked(key, waiting=held)
            if held is not None:
                return  # the kubelet keeps retrying: the pod waits, the Job stays active
            await asyncio.sleep(self.job_duration)
            outcome = self.job_outcome
            with self._mutex:
                job = self._job_if_running(key, uid)
                snapshot = (
                    copy.deepcopy(render(job, self._def_for(("batch", "jobs")))) if job else None
                )
            if outcome is None or snapshot is None:
                return  # "never finishes on its own"
            loop = asyncio.get_running_loop()
            try:
                exit_code, text = await loop.run_in_executor(None, outcome, snapshot)
            except Exception as exc:  # a broken job_outcome is a test bug: fail the pod, report it
                self._internal_errors.append(exc)
                log.exception("job_outcome failed for %s/%s", key[2], key[3])
                exit_code, text = 1, traceback.format_exc()
            with self._mutex:
                if self._job_if_running(key, uid) is not None:
                    self._finish_locked(key, uid, int(exit_code), str(text))
        finally:
            self._job_tasks.pop(uid, None)

    def _job_if_running(self, key: Key, uid: str) -> Obj | None:
        job = self._store.get(key)
        if job is None or job["metadata"]["uid"] != uid:
            return None
        conditions = (job.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Complete", "Failed") for c in conditions):
            return None
        return job

    def _start_pod_locked(self, job_key: Key, waiting: str | None = None) -> None:
        jobs = self._def_for(("batch", "jobs"))
        pods = self._def_for(("", "pods"))
        job = self._store[job_key]
        uid = job["metadata"]["uid"]
        namespace, name = job_key[2], job_key[3]
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        for label in JOB_NAME_LABELS:
            labels[label] = name
        for label in JOB_UID_LABELS:
            labels[label] = uid
        stamp = now_rfc3339()
        spec = template.get("spec") or {}
        spec.setdefault("nodeName", "emulated-node")
        pod_name = f"{name}-{''.join(random.choices(NAME_ALPHABET, k=5))}"
        pod: Obj = {
            "metadata": {
                "name": pod_name,
                "generateName": f"{name}-",
                "namespace": namespace,
                "labels": labels,
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": stamp,
                "generation": 1,
            },
            "spec": spec,
            "status": {
                "phase": "Running" if waiting is None else "Pending",
                "startTime": stamp,
                "hostIP": "10.0.0.1",
                "podIP": "10.1.0.2",
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        "name": str(c.get("name")),
                        "image": str(c.get("image")),
                        "imageID": "",
                        "ready": waiting is None,
                        "started": waiting is None,
                        "restartCount": 0,
                        **(
                            {
                                "containerID": f"containerd://{uuid.uuid4().hex}",
                                "state": {"running": {"startedAt": stamp}},
                            }
                            if waiting is None
                            else {
                                "state": {
                                    "waiting": {
                                        "reason": "CreateContainerConfigError",
                                        "message": waiting,
                                    }
                                }
                            }
                        ),
                    }
                    for c in spec.get("containers") or []
                ],
            },
        }
        pod_key = self._key(pods, namespace, pod_name)
        self._commit(pods, pod_key, pod, None)
        self._job_pods[uid] = pod_key
        self._logs[(namespace, pod_name)] = ""
        if waiting is not None:
            self._waiting_pods[(namespace, pod_name)] = "CreateContainerConfigError"
        updated = copy.deepcopy(job)
        status = updated.setdefault("status", {})
        status.update({"active": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}})
        status.setdefault("startTime", stamp)
        self._commit(jobs, job_key, updated, job)

    def _finish_locked(self, job_key: Key, uid: str, exit_code: int, text: str) -> None:
        jobs = self._def_for(("batch", "jobs"))
        pods = self._def_for(("", "pods"))
        job = self._store.get(job_key)
        if job is None or self._job_if_running(job_key, uid) is None:
            return
        stamp = now_rfc3339()
        pod_key = self._job_pods.get(uid)
        pod = self._store.get(pod_key) if pod_key else None
        if pod_key is not None and pod is not None:
            self._logs[(pod_key[2], pod_key[3])] = text
            self._waiting_pods.pop((pod_key[2], pod_key[3]), None)
            new_pod = copy.deepcopy(pod)
            status = new_pod.setdefault("status", {})
            status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            for container in status.get("containerStatuses") or []:
                started = (container.get("state") or {}).get("running", {}).get("startedAt", stamp)
                container["ready"] = False
                container["started"] = False
                container["state"] = {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "startedAt": started,
                        "finishedAt": stamp,
                        "containerID": container.get("containerID", ""),
                    }
                }
            self._commit(pods, pod_key, new_pod, pod)
        new_job = copy.deepcopy(job)
        status = new_job.setdefault("status", {})
        status.pop("active", None)
        status.update({"ready": 0, "terminating": 0, "uncountedTerminatedPods": {}})
        if exit_code == 0:
            reason, message = "CompletionsReached", "Reached expected number of succeeded pods"
            status["succeeded"] = 1
            status["completionTime"] = stamp
            kinds = ("SuccessCriteriaMet", "Complete")
        else:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            status["failed"] = 1
            kinds = ("FailureTarget", "Failed")
        status["conditions"] = [
            *(status.get("conditions") or []),
            *(
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind in kinds
            ),
        ]
        self._commit(jobs, job_key, new_job, job)
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is not None and self._running and self._loop is not None:
            self._loop.call_soon_threadsafe(self._schedule_ttl, job_key, uid, float(ttl))

    def _schedule_ttl(self, key: Key, uid: str, ttl: float) -> None:
        assert self._loop is not None
        self._loop.call_later(ttl, self._ttl_expired, key, uid)

    def _ttl_expired(self, key: Key, uid: str) -> None:
        with self._mutex:
            job = self._store.get(key)
            if job is not None and job["metadata"]["uid"] == uid:
                self._delete_locked(self._def_for(("batch", "jobs")), key, "Background")

    # -- storage core ---------------------------------------------------------------------

    def _key(self, rd: ResourceDef, namespace: str | None, name: str) -> Key:
        return (rd.group, rd.plural, (namespace or "") if rd.namespaced else "", name)

    def _commit(self, rd: ResourceDef, key: Key, new: Obj | None, old: Obj | None) -> Obj:
        """Store (or with new=None delete) an object: next resourceVersion, history, watches."""
        self._rv += 1
        if new is not None:
            new.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
            new["apiVersion"], new["kind"] = rd.api_version, rd.kind
            self._store[key] = new
            event = Event(self._rv, rd.gp, "ADDED" if old is None else "MODIFIED", new, old)
        else:
            assert old is not None
            new = copy.deepcopy(old)
            new["metadata"]["resourceVersion"] = str(self._rv)
            del self._store[key]
            event = Event(self._rv, rd.gp, "DELETED", new, None)
        if len(self._history) >= self._history_size > 0:
            self._floor = self._history.popleft().rv
        if self._history_size > 0:
            self._history.append(event)
        else:
            self._floor = self._rv
        for watcher in self._watchers:
            if watcher.rd.gp == rd.gp:
                watcher.pending.append(event)
                watcher.notify()
        self._after_commit(rd, key, event)
        return new

    def _after_commit(self, rd: ResourceDef, key: Key, event: Event) -> None:
        if rd.gp == ("apiextensions.k8s.io", "customresourcedefinitions"):
            if event.type == "DELETED":
                spec = event.obj.get("spec") or {}
                self._drop_resource(
                    str(spec.get("group")), str((spec.get("names") or {}).get("plural"))
                )
            else:
                self._register_crd(event.obj)
        elif rd.gp == ("batch", "jobs"):
            uid = event.obj["metadata"]["uid"]
            if event.type == "DELETED":
                task = self._job_tasks.pop(uid, None)
                if task is not None and self._loop is not None:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(task.cancel)
            else:
                self._maybe_start_job(key, event.obj)
        elif rd.gp == ("", "pods") and event.type == "DELETED":
            self._logs.pop((key[2], key[3]), None)
            self._waiting_pods.pop((key[2], key[3]), None)
        if event.type == "DELETED":
            self._applied.pop(key, None)

    def _drop_resource(self, group: str, plural: str) -> None:
        """A CRD went away: its objects go too, its watches end."""
        with contextlib.suppress(KeyError):
            rd = self._def_for((group, plural))
            for key in [k for k in self._store if k[:2] == (group, plural)]:
                self._commit(rd, key, None, self._store[key])
        for watcher in self._watchers:
            if watcher.rd.gp == (group, plural):
                watcher.closed = True
                watcher.notify()
        self._unregister(group, plural)

    def _delete_locked(self, rd: ResourceDef, key: Key, propagation: str) -> Obj:
        """Delete now (or mark, while finalizers remain) and collect the dependents."""
        obj = self._store[key]
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return obj
            marked = copy.deepcopy(obj)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rd, key, marked, obj)
        uid = meta.get("uid")
        dependents = [
            (k, o)
            for k, o in self._store.items()
            if any(
                ref.get("uid") == uid
                for ref in (o.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        if propagation == "Foreground":
            self._collect(dependents, uid, "Foreground")
        gone = self._commit(rd, key, None, obj)
        if rd.gp == ("", "namespaces"):
            for other_key in [
                k for k in self._store if k[2] == key[3] and k[:2] != ("", "namespaces")
            ]:
                if other_key in self._store:
                    self._force_delete(other_key)
        if propagation != "Foreground":
            self._collect(dependents, uid, propagation)
        return gone

    def _collect(self, dependents: list[tuple[Key, Obj]], owner_uid: str, propagation: str) -> None:
        for dep_key, _ in dependents:
            current = self._store.get(dep_key)
            if current is None:
                continue
            dep_rd = self._def_for(dep_key[:2])
            if propagation == "Orphan":
                orphaned = copy.deepcopy(current)
                refs = [
                    r
                    for r in orphaned["metadata"].get("ownerReferences") or []
                    if r.get("uid") != owner_uid
                ]
                if refs:
                    orphaned["metadata"]["ownerReferences"] = refs
                else:
                    orphaned["metadata"].pop("ownerReferences", None)
                self._commit(dep_rd, dep_key, orphaned, current)
            else:
                self._delete_locked(dep_rd, dep_key, "Background")

    def _force_delete(self, key: Key) -> None:
        rd = self._def_for(key[:2])
        obj = self._store[key]
        if obj["metadata"].get("finalizers"):
            stripped = copy.deepcopy(obj)
            stripped["metadata"].pop("finalizers")
            self._commit(rd, key, stripped, obj)
        self._delete_locked(rd, key, "Background")

    def _managed_fields(
        self, rd: ResourceDef, key: Key, applied: dict[tuple[str, str], tuple[Obj, str]]
    ) -> list[Obj]:
        entries = []
        for (manager, sub), (config, stamp) in sorted(applied.items()):
            entry: Obj = {
                "manager": manager,
                "operation": "Apply",
                "apiVersion": rd.api_version,
                "time": stamp,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(config),
            }
            if sub:
                entry["subresource"] = sub
            entries.append(entry)
        return entries

    # -- HTTP entry point -----------------------------------------------------------------

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        """Non-resource URLs: kmock's DSL, skipping ``KubernetesEmulator._handle`` (its store)."""
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    async def _serve_api(self, request: Any) -> Any:
        """kmock's ``/api``, plus the field the official client's model requires."""
        payload: Any = await super()._serve_api(request)
        host = self.base_url.removeprefix("http://")
        payload["serverAddressByClientCIDRs"] = [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]
        return payload

    async def _serve_list(self, request: Any) -> Any:
        """kmock's store-backed fallbacks are never the answer here: let kmock move on."""
        raise NotImplementedError

    _serve_watch = _serve_fetch = _serve_create = _serve_update = _serve_delete = _serve_list  # type: ignore[assignment]

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        query = dict(raw.query.items())
        route = parse_route(raw.method, raw.path, query)
        record = RequestRecord(
            method=raw.method,
            path=raw.path,
            query=query,
            verb=route.verb if route else raw.method.lower(),
            group=route.group if route else None,
            plural=route.plural if route else None,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
            content_type=raw.headers.get("Content-Type", ""),
        )
        if route is not None and route.verb == "create" and record.name is None:
            record.name = _body_name(body)
        with self._mutex:
            self._records.append(record)
        try:
            await self._apply_faults(record)
            if route is None:
                if raw.path != "/" and raw.path.endswith("/"):  # the client asks for /apis/
                    raw = raw.clone(rel_url=raw.rel_url.with_path(raw.path.rstrip("/")))
                response = await super().__call__(raw)  # kmock: discovery and its DSL
            else:
                response = await self._serve(raw, route, body, record)
        except ApiError as exc:
            response = exc.response()
        except Exception as exc:
            self._internal_errors.append(exc)
            log.exception("the Kubernetes emulator failed on %s %s", raw.method, raw.path_qs)
            response = ApiError(500, f"Internal error occurred: {exc!r}").response()
        if not record.status:
            record.status = response.status
        return response

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """kmock's error rendering (non-resource URLs), with real Status bodies."""
        if isinstance(exc, kmock.KubernetesError):
            if exc.status == 404:
                return _not_served().response()
            return ApiError(exc.status, exc.message or type(exc).__name__).response()
        self._internal_errors.append(exc)
        log.error("the Kubernetes emulator failed", exc_info=exc)
        return ApiError(500, f"Internal error occurred: {exc!r}").response()

    async def _apply_faults(self, record: RequestRecord) -> None:
        with self._mutex:
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.matches(record.verb, record.plural, record.name, record.subresource)
                ),
                None,
            )
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            denied = record.plural is not None and (
                (record.verb, record.group or "", record.plural, record.subresource) in self._denied
            )
        if fault is not None:
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            if fault.status:
                raise self._fault_error(fault, record)
        if denied:
            raise self._forbidden(record)

    def _fault_error(self, fault: Fault, record: RequestRecord) -> ApiError:
        full = f"{record.plural}.{record.group}" if record.group else str(record.plural)
        named = f'{full} "{record.name}"' if record.name else full
        defaults = {
            404: f"{named} not found",
            409: (
                f"Operation cannot be fulfilled on {named}: the object has been modified; please "
                "apply your changes to the latest version and try again"
            ),
            410: "too old resource version",
            429: "Too many requests, please try again later.",
            500: "Internal error occurred: injected fault",
            503: "the server is currently unable to handle the request",
            504: (
                "Timeout: request did not complete within requested timeout - "
                "context deadline exceeded"
            ),
        }
        details: Obj = {"kind": record.plural or ""}
        if record.group:
            details["group"] = record.group
        if record.name:
            details["name"] = record.name
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = format(fault.retry_after, "g")
            details["retryAfterSeconds"] = math.ceil(fault.retry_after)
        return ApiError(
            fault.status,
            fault.message or defaults.get(fault.status, f"injected {fault.status}"),
            details=details,
            headers=headers,
        )

    def _forbidden(self, record: RequestRecord) -> ApiError:
        group = record.group or ""
        full = f"{record.plural}.{group}" if group else str(record.plural)
        subject = f'{full} "{record.name}"' if record.name else full
        resource = f"{record.plural}/{record.subresource}" if record.subresource else record.plural
        scope = (
            f'in the namespace "{record.namespace}"' if record.namespace else "at the cluster scope"
        )
        message = (
            f'{subject} is forbidden: User "{SERVICE_ACCOUNT}" cannot {record.verb} resource '
            f'"{resource}" in API group "{group}" {scope}'
        )
        details: Obj = {"group": group, "kind": record.plural}
        if record.name:
            details["name"] = record.name
        return ApiError(403, message, details=details)

    # -- resource requests ----------------------------------------------------------------

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, route: Route, body: bytes, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        with self._mutex:
            rd = self._defs.get((route.group, route.version, route.plural))
        if rd is None:
            raise _not_served()
        if (route.namespace is not None and not rd.namespaced) or (
            rd.namespaced and route.namespace is None and route.verb not in ("list", "watch")
        ):
            raise _not_served()
        if route.subresource is not None and (
            route.name is None or route.subresource not in rd.subresources
        ):
            raise _not_served()
        params = record.query
        dry_run = params.get("dryRun") == "All"
        verb = route.verb
        if verb == "watch":
            return await self._watch(raw, rd, route, params, record)
        if verb == "list":
            return _json(self._list(rd, route, params))
        if verb == "get" and route.subresource == "log":
            return aiohttp.web.Response(
                text=self._pod_log(route, params), content_type="text/plain"
            )
        if verb == "get":
            return _json(self._get(rd, route))
        if verb == "create":
            obj, created = self._create_request(rd, route, _decode(body), dry_run)
            return _json(obj, 201 if created else 200)
        if verb == "update":
            return _json(self._update_request(rd, route, _decode(body), dry_run))
        if verb == "patch":
            content_type = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
            obj, created = self._patch_request(rd, route, body, content_type, params, dry_run)
            return _json(obj, 201 if created else 200)
        if verb == "delete":
            options = _decode(body) if body.strip() else {}
            return _json(self._delete_request(rd, route, options, params, dry_run))
        raise ApiError(
            405, f"the server does not allow this method on the requested resource ({verb})"
        )

    def _not_found(self, rd: ResourceDef, name: str) -> ApiError:
        return ApiError(
            404,
            f'{rd.full_name} "{name}" not found',
            details={"name": name, "group": rd.group, "kind": rd.plural},
        )

    def _namespace_missing(self, namespace: str) -> ApiError:
        return ApiError(
            404,
            f'namespaces "{namespace}" not found',
            details={"name": namespace, "kind": "namespaces"},
        )

    def _conflict(self, rd: ResourceDef, name: str, what: str) -> ApiError:
        return ApiError(
            409,
            f'Operation cannot be fulfilled on {rd.full_name} "{name}": {what}',
            details={"name": name, "group": rd.group, "kind": rd.plural},
        )

    def _stale(self, rd: ResourceDef, name: str) -> ApiError:
        return self._conflict(
            rd,
            name,
            MSG_MODIFIED,
        )

    def _get(self, rd: ResourceDef, route: Route) -> Obj:
        assert route.name is not None
        with self._mutex:
            obj = self._store.get(self._key(rd, route.namespace, route.name))
            if obj is None:
                raise self._not_found(rd, route.name)
            return render(obj, rd)

    def _pod_log(self, route: Route, params: Mapping[str, str]) -> str:
        assert route.name is not None
        assert route.namespace is not None
        with self._mutex:
            pod = self._store.get(("", "pods", route.namespace, route.name))
            if pod is None:
                raise self._not_found(self._def_for(("", "pods")), route.name)
            text = self._logs.get((route.namespace, route.name), "")
            waiting = self._waiting_pods.get((route.namespace, route.name))
        names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
        container = params.get("container")
        if waiting is not None:
            raise _bad_request(
                f'container "{container or names[0]}" in pod "{route.name}" is waiting to start: '
                f"{waiting}"
            )
        if container is None and len(names) > 1:
            raise _bad_request(
                f"a container name must be specified for pod {route.name}, "
                f"choose one of: [{' '.join(names)}]"
            )
        if container is not None and container not in names:
            raise _bad_request(f"container {container} is not valid for pod {route.name}")
        if "tailLines" in params:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(params["tailLines"]) :]) if int(params["tailLines"]) else ""
        return text

    def _selector(
        self, rd: ResourceDef, namespace: str | None, params: Mapping[str, str]
    ) -> Selector:
        try:
            labels = parse_label_selector(params.get("labelSelector", ""))
            fields = parse_field_selector(params.get("fieldSelector", ""), rd.plural)
        except SelectorError as exc:
            raise _bad_request(str(exc)) from exc
        return Selector(namespace, tuple(labels), tuple(fields))

    def _list(self, rd: ResourceDef, route: Route, params: Mapping[str, str]) -> Obj:
        selector = self._selector(rd, route.namespace, params)
        limit = int(params.get("limit") or 0)
        start: tuple[str, str] | None = None
        if params.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(params["continue"].encode()))
                start = (str(token["start"][0]), str(token["start"][1]))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise _bad_request(f"continue key is not valid: {exc}") from exc
        with self._mutex:
            list_rv = self._rv
            items = [
                obj
                for key, obj in sorted(self._store.items())
                if key[:2] == rd.gp
                and (start is None or (key[2], key[3]) > start)
                and selector.matches(obj)
            ]
        metadata: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token_data = {"rv": list_rv, "start": [last.get("namespace", ""), last["name"]]}
            metadata["continue"] = base64.urlsafe_b64encode(
                json.dumps(token_data).encode()
            ).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{rd.kind}List",
            "apiVersion": rd.api_version,
            "metadata": metadata,
            "items": [render(obj, rd) for obj in items],
        }

    # -- watch ----------------------------------------------------------------------------

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        rd: ResourceDef,
        route: Route,
        params: Mapping[str, str],
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        selector = self._selector(rd, route.namespace, params)
        if route.name is not None:  # the legacy single-object watch
            selector = Selector(
                selector.namespace,
                selector.labels,
                (*selector.fields, FieldRequirement(("metadata", "name"), True, route.name)),
            )
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise _bad_request(f"invalid timeoutSeconds: {exc}") from exc
        bookmarks = params.get("allowWatchBookmarks", "").lower() in ("true", "1")
        rv_text = params.get("resourceVersion", "")
        loop = asyncio.get_running_loop()
        watcher = Watcher(rd, selector, bookmarks, loop)
        initial: list[Obj] = []
        expired: str | None = None
        with self._mutex:
            if rv_text in ("", "0"):
                initial = [
                    watcher.render("ADDED", obj)
                    for key, obj in sorted(self._store.items())
                    if key[:2] == rd.gp and selector.matches(obj)
                ]
            else:
                try:
                    since = int(rv_text)
                except ValueError as exc:
                    raise _bad_request(f'invalid resource version "{rv_text}"') from exc
                if since < self._floor:
                    expired = f"too old resource version: {since} ({self._floor})"
                else:
                    for event in self._history:
                        if event.rv > since and event.gp == rd.gp:
                            translated = watcher.translate(event)
                            if translated is not None:
                                initial.append(translated)
            if expired is None:
                self._watchers.append(watcher)
        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            record.status = 200
            if expired is not None:
                await _write_event(
                    response, {"type": "ERROR", "object": ApiError(410, expired).status()}
                )
            else:
                await self._pump(response, watcher, initial, timeout)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: nothing to answer
        finally:
            with self._mutex:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        return response

    async def _pump(
        self,
        response: aiohttp.web.StreamResponse,
        watcher: Watcher,
        initial: list[Obj],
        timeout: float | None,
    ) -> None:
        loop = watcher.loop
        for line in initial:
            await _write_event(response, line)
        deadline = loop.time() + timeout if timeout else None
        last_sent = loop.time()
        while True:
            with self._mutex:
                batch = list(watcher.pending)
                watcher.pending.clear()
                watcher.wake.clear()
                current_rv = self._rv
                closed = watcher.closed
            for event in batch:
                translated = watcher.translate(event)
                if translated is not None:
                    await _write_event(response, translated)
                    last_sent = loop.time()
            if closed:
                return
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            if (
                watcher.bookmarks
                and not batch
                and (watcher.bookmark_requested or now - last_sent >= self.bookmark_interval)
            ):
                watcher.bookmark_requested = False
                await _write_event(
                    response,
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": watcher.rd.kind,
                            "apiVersion": watcher.rd.api_version,
                            "metadata": {"resourceVersion": str(current_rv)},
                        },
                    },
                )
                last_sent = now
            waits = []
            if deadline is not None:
                waits.append(deadline - now)
            if watcher.bookmarks:
                waits.append(max(0.0, self.bookmark_interval - (now - last_sent)))
            with contextlib.suppress(TimeoutError):  # a deadline or a bookmark is due
                await asyncio.wait_for(watcher.wake.wait(), timeout=min(waits) if waits else None)

    # -- writes ---------------------------------------------------------------------------

    def _create_request(
        self, rd: ResourceDef, route: Route, body: Any, dry_run: bool
    ) -> tuple[Obj, bool]:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        with self._mutex:
            obj = self._prepare_create(rd, route.namespace, body)
            if dry_run:
                return render(obj, rd), True
            return render(
                self._commit(
                    rd, self._key(rd, route.namespace, obj["metadata"]["name"]), obj, None
                ),
                rd,
            ), True

    def _check_kind(self, rd: ResourceDef, obj: Obj) -> None:
        api_version = str(obj.get("apiVersion") or "")
        if api_version and api_version.rpartition("/")[0] != rd.group:
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rd.api_version})"
            )
        if obj.get("kind") and obj.get("kind") != rd.kind:
            raise _bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind ({rd.kind})"
            )

    def _prepare_create(self, rd: ResourceDef, namespace: str | None, body: Obj) -> Obj:
        """A validated, defaulted new object from a create body (not stored yet)."""
        obj = copy.deepcopy(body)
        self._check_kind(rd, obj)
        obj["apiVersion"], obj["kind"] = rd.api_version, rd.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if rd.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request(MSG_NAMESPACE_MISMATCH)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = str(meta["generateName"]) + "".join(
                    random.choices(NAME_ALPHABET, k=5)
                )
            else:
                raise _invalid(
                    rd.kind_name,
                    "",
                    rd.group,
                    rd.kind,
                    [
                        Cause(
                            "metadata.name",
                            "Required value: name or generateName is required",
                            "FieldValueRequired",
                        )
                    ],
                )
        name = str(meta["name"])
        if (
            rd.namespaced
            and namespace is not None
            and ("", "namespaces", "", namespace) not in self._store
        ):
            raise self._namespace_missing(namespace)
        if self._key(rd, namespace, name) in self._store:
            raise ApiError(
                409,
                f'{rd.full_name} "{name}" already exists',
                reason="AlreadyExists",
                details={"name": name, "group": rd.group, "kind": rd.plural},
            )
        for server_field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(server_field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if rd.status_subresource:
            obj.pop("status", None)
        self._builtin_defaults_on_create(rd, obj, trusted=False)
        self._validate(rd, obj, None)
        return obj

    def _builtin_defaults_on_create(self, rd: ResourceDef, obj: Obj, *, trusted: bool) -> None:
        meta = obj.setdefault("metadata", {})
        if rd.gp == ("", "namespaces"):
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name")
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif rd.gp == ("", "pods") and not trusted:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif rd.gp == ("", "persistentvolumeclaims") and not trusted:
            spec = obj.get("spec") or {}
            obj["status"] = {
                "phase": "Bound",
                "accessModes": list(spec.get("accessModes") or []),
                "capacity": dict((spec.get("resources") or {}).get("requests") or {}),
            }
        elif rd.gp == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            _secret_string_data(obj)
        elif rd.gp == ("batch", "jobs") and not trusted:
            uid = meta.get("uid") or str(uuid.uuid4())
            meta["uid"] = uid
            spec = obj.setdefault("spec", {})
            template = spec.setdefault("template", {})
            template_meta = template.setdefault("metadata", {})
            if not meta.get("labels") and template_meta.get("labels"):
                meta["labels"] = dict(template_meta["labels"])
            labels = template_meta.setdefault("labels", {})
            for label in JOB_UID_LABELS:
                labels[label] = uid
            for label in JOB_NAME_LABELS:
                labels[label] = meta.get("name")
            spec.setdefault(
                "selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            )
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            obj["status"] = {}
        elif rd.gp == ("apiextensions.k8s.io", "customresourcedefinitions") and not trusted:
            self._crd_defaults(obj)

    def _validate(self, rd: ResourceDef, obj: Obj, old: Obj | None) -> None:
        """Schema pruning/defaulting/validation and the built-in checks; 422 on failure."""
        if rd.schema is not None:
            pruned = prune_and_default(obj, rd.schema, root=True)
            assert pruned is obj
        causes = metadata_causes(obj, label_name=rd.gp == ("", "namespaces"))
        if rd.validator is not None:
            checked = {k: v for k, v in obj.items() if k != "metadata"}
            causes += schema_causes(rd.validator, checked)
        if rd.gp == ("batch", "jobs"):
            causes += self._job_causes(obj, old)
        elif rd.gp == ("", "pods"):
            causes += pod_spec_causes(obj.get("spec"), "spec")
        elif rd.gp == ("apiextensions.k8s.io", "customresourcedefinitions"):
            causes += self._crd_causes(obj)
        if causes:
            name = str((obj.get("metadata") or {}).get("name", ""))
            raise _invalid(rd.kind_name, name, rd.group, rd.kind, causes)

    @staticmethod
    def _job_causes(job: Obj, old: Obj | None) -> list[Cause]:
        name = str((job.get("metadata") or {}).get("name", ""))
        causes = []
        if len(name) > 63:
            causes.append(
                Cause(
                    "metadata.name",
                    f"Invalid value: {json.dumps(name)}: must be no more than 63 characters",
                )
            )
        spec = job.get("spec") or {}
        pod_spec = (spec.get("template") or {}).get("spec")
        causes += pod_spec_causes(pod_spec, "spec.template.spec")
        policy = (pod_spec or {}).get("restartPolicy")
        if policy is None:
            causes.append(
                Cause(
                    "spec.template.spec.restartPolicy",
                    'Required value: valid values: "OnFailure", "Never"',
                    "FieldValueRequired",
                )
            )
        elif policy not in ("OnFailure", "Never"):
            causes.append(
                Cause(
                    "spec.template.spec.restartPolicy",
                    f"Unsupported value: {json.dumps(policy)}: "
                    'supported values: "OnFailure", "Never"',
                    "FieldValueNotSupported",
                )
            )
        if old is not None:
            old_spec = old.get("spec") or {}
            for field in ("template", "selector"):
                if spec.get(field) != old_spec.get(field):
                    causes.append(
                        Cause(
                            f"spec.{field}",
                            f"Invalid value: {json.dumps(spec.get(field))}: field is immutable",
                        )
                    )
        return causes

    def _update_request(self, rd: ResourceDef, route: Route, body: Any, dry_run: bool) -> Obj:
        assert route.name is not None
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        meta = body.get("metadata") or {}
        if meta.get("name") != route.name:
            raise _name_mismatch(meta.get("name"), route.name)
        if rd.namespaced and meta.get("namespace") and meta["namespace"] != route.namespace:
            raise _bad_request(MSG_NAMESPACE_MISMATCH)
        self._check_kind(rd, body)
        with self._mutex:
            key = self._key(rd, route.namespace, route.name)
            old = self._store.get(key)
            if old is None:
                raise self._not_found(rd, route.name)
            sent_rv = str(meta.get("resourceVersion") or "")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise self._stale(rd, route.name)
            if not sent_rv and rd.custom:
                raise _invalid(
                    rd.kind_name,
                    route.name,
                    rd.group,
                    rd.kind,
                    [
                        Cause(
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            return render(
                self._write(rd, key, old, copy.deepcopy(body), route.subresource, dry_run), rd
            )

    def _write(
        self,
        rd: ResourceDef,
        key: Key,
        old: Obj,
        candidate: Obj,
        subresource: str | None,
        dry_run: bool,
        applied: dict[tuple[str, str], tuple[Obj, str]] | None = None,
    ) -> Obj:
        """Turn an update candidate into the stored object (status isolation, server-owned
        metadata, generation, validation), then commit unless nothing changed."""
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            new["apiVersion"], new["kind"] = rd.api_version, rd.kind
            meta = new.setdefault("metadata", {})
            old_meta = old["metadata"]
            for server_field in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ):
                if server_field in old_meta:
                    meta[server_field] = old_meta[server_field]
                else:
                    meta.pop(server_field, None)
            meta.pop("selfLink", None)
            if rd.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rd.gp == ("", "secrets"):
                _secret_string_data(new)
        self._validate(rd, new, old)  # prunes and defaults first: generation sees the result
        if subresource != "status" and _spec_part(new) != _spec_part(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        applied = applied if applied is not None else self._applied.get(key, {})
        managed = self._managed_fields(rd, key, applied)
        if managed:
            new["metadata"]["managedFields"] = managed
        else:
            new["metadata"].pop("managedFields", None)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run:
            return new
        if applied:
            self._applied[key] = applied
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(rd, key, new, old)
            return self._delete_locked(rd, key, "Background")
        if new == old:
            return old  # a no-op write: no new resourceVersion, no event (as the apiserver)
        return self._commit(rd, key, new, old)

    def _patch_request(
        self,
        rd: ResourceDef,
        route: Route,
        body: bytes,
        content_type: str,
        params: Mapping[str, str],
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        assert route.name is not None
        if content_type == APPLY_PATCH:
            return self._apply_request(rd, route, body, params, dry_run)
        if content_type not in (MERGE_PATCH, STRATEGIC_PATCH, JSON_PATCH):
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}, {STRATEGIC_PATCH}",
            )
        patch = _decode(body)
        with self._mutex:
            key = self._key(rd, route.namespace, route.name)
            old = self._store.get(key)
            if old is None:
                raise self._not_found(rd, route.name)
            if content_type == JSON_PATCH:
                if not isinstance(patch, list):
                    raise _bad_request(
                        "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                    )
                try:
                    patched = jsonpatch.apply_patch(copy.deepcopy(old), patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiError(
                        422,
                        f"the server rejected our request due to an error in our request: {exc}",
                    ) from exc
            else:
                if not isinstance(patch, dict):
                    raise _bad_request("the body of the request was in an unknown format")
                patched = merge_patch(old, patch)
            if not isinstance(patched, dict):
                raise _bad_request("the patch did not produce an object")
            patched_meta = patched.get("metadata") or {}
            sent_rv = str(patched_meta.get("resourceVersion") or "")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise self._stale(rd, route.name)
            if patched_meta.get("name") != route.name:
                raise _invalid(
                    rd.kind_name,
                    route.name,
                    rd.group,
                    rd.kind,
                    [
                        Cause(
                            "metadata.name",
                            f"Invalid value: {json.dumps(patched_meta.get('name'))}: "
                            "field is immutable",
                        )
                    ],
                )
            return render(self._write(rd, key, old, patched, route.subresource, dry_run), rd), False

    def _apply_request(
        self, rd: ResourceDef, route: Route, body: bytes, params: Mapping[str, str], dry_run: bool
    ) -> tuple[Obj, bool]:
        assert route.name is not None
        manager = params.get("fieldManager", "")
        if not manager:
            raise _invalid(
                "PatchOptions.meta.k8s.io",
                "",
                "meta.k8s.io",
                "PatchOptions",
                [
                    Cause(
                        "fieldManager",
                        "Required value: is required for apply patch",
                        "FieldValueRequired",
                    )
                ],
            )
        force = params.get("force", "").lower() in ("true", "1")
        try:
            config = yaml.safe_load(body.decode() or "{}")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise _bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(config, dict):
            raise _bad_request("error decoding YAML: the apply configuration must be an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise _bad_request(
                "invalid object type: apiVersion and kind must be set in an apply configuration"
            )
        self._check_kind(rd, config)
        meta = config.setdefault("metadata", {})
        meta.setdefault("name", route.name)
        if meta.get("name") != route.name:
            raise _name_mismatch(meta.get("name"), route.name)
        sub = route.subresource or ""
        owned = {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
        owned_meta = {
            k: v for k, v in meta.items() if k not in ("name", "namespace", "resourceVersion")
        }
        if owned_meta:
            owned["metadata"] = owned_meta
        else:
            owned.pop("metadata", None)
        if sub == "status":
            owned = {"status": owned["status"]} if "status" in owned else {}
        elif rd.status_subresource:
            owned.pop("status", None)
        stamp = now_rfc3339()
        with self._mutex:
            key = self._key(rd, route.namespace, route.name)
            old = self._store.get(key)
            applied = dict(self._applied.get(key, {}))
            if old is None:
                if sub:
                    raise self._not_found(rd, route.name)
                body_obj = copy.deepcopy(config)
                body_obj.get("metadata", {}).pop("resourceVersion", None)
                obj = self._prepare_create(rd, route.namespace, body_obj)
                obj["metadata"]["managedFields"] = self._managed_fields(
                    rd, key, {(manager, sub): (owned, stamp)}
                )
                if dry_run:
                    return render(obj, rd), True
                self._applied[key] = {(manager, sub): (owned, stamp)}
                return render(self._commit(rd, key, obj, None), rd), True
            sent_rv = str(meta.get("resourceVersion") or "")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise self._stale(rd, route.name)
            others = {m: c for m, (c, _) in applied.items() if m != (manager, sub)}
            conflicts: dict[str, list[str]] = {}
            for path, value in leaf_paths(owned):
                for (other, _), other_config in others.items():
                    if (
                        get_path(other_config, path) is not _MISSING
                        and get_path(old, path) != value
                    ):
                        conflicts.setdefault(other, []).append("." + ".".join(path))
            if conflicts and not force:
                raise self._apply_conflict(rd, route.name, conflicts)
            if conflicts:  # force: the other managers lose these fields
                for (other, other_sub), (other_config, other_stamp) in list(applied.items()):
                    if other in conflicts and (other, other_sub) != (manager, sub):
                        trimmed = copy.deepcopy(other_config)
                        for path, _ in leaf_paths(owned):
                            drop_path(trimmed, path)
                        applied[(other, other_sub)] = (trimmed, other_stamp)
            previous = applied.get((manager, sub), ({}, ""))[0]
            candidate = copy.deepcopy(old)
            remove_unapplied(
                candidate,
                previous,
                owned,
                [c for m, (c, _) in applied.items() if m != (manager, sub)],
            )
            deep_merge(candidate, owned)
            if previous == owned and (manager, sub) in applied:
                applied[(manager, sub)] = (owned, applied[(manager, sub)][1])
            else:
                applied[(manager, sub)] = (owned, stamp)
            return render(
                self._write(rd, key, old, candidate, route.subresource, dry_run, applied), rd
            ), False

    def _apply_conflict(
        self, rd: ResourceDef, name: str, conflicts: dict[str, list[str]]
    ) -> ApiError:
        total = sum(len(paths) for paths in conflicts.values())
        lines = []
        causes = []
        for manager, paths in conflicts.items():
            for path in paths:
                causes.append(
                    {
                        "reason": "FieldManagerConflict",
                        "message": f'conflict with "{manager}"',
                        "field": path,
                    }
                )
            if len(paths) == 1 and len(conflicts) == 1:
                lines.append(f'conflict with "{manager}": {paths[0]}')
            else:
                lines.append(f'conflicts with "{manager}":\n' + "\n".join(f"- {p}" for p in paths))
        plural = "conflict" if total == 1 else "conflicts"
        return ApiError(
            409,
            f"Apply failed with {total} {plural}: " + "\n".join(lines),
            details={"name": name, "group": rd.group, "kind": rd.plural, "causes": causes},
        )

    def _delete_request(
        self, rd: ResourceDef, route: Route, options: Any, params: Mapping[str, str], dry_run: bool
    ) -> Obj:
        assert route.name is not None
        if not isinstance(options, dict):
            raise _bad_request("the body of the request was in an unknown format")
        propagation = params.get("propagationPolicy") or options.get("propagationPolicy")
        orphan = (
            params.get("orphanDependents", str(options.get("orphanDependents", ""))).lower()
            == "true"
        )
        if propagation is None:
            # batch/v1 Jobs orphan their pods by default (kept for backwards compatibility).
            job = rd.gp == ("batch", "jobs") and rd.version == "v1"
            propagation = "Orphan" if orphan or job else "Background"
        if propagation not in ("Orphan", "Background", "Foreground"):
            raise _invalid(
                "DeleteOptions.meta.k8s.io",
                "",
                "meta.k8s.io",
                "DeleteOptions",
                [
                    Cause(
                        "propagationPolicy",
                        f'Unsupported value: "{propagation}": supported values: '
                        '"Foreground", "Background", "Orphan", "nil"',
                        "FieldValueNotSupported",
                    )
                ],
            )
        preconditions = options.get("preconditions") or {}
        if rd.gp == ("", "namespaces") and route.name in ("default", "kube-system", "kube-public"):
            raise ApiError(
                403,
                f'namespaces "{route.name}" is forbidden: this namespace may not be deleted',
                details={"name": route.name, "kind": "namespaces"},
            )
        with self._mutex:
            key = self._key(rd, route.namespace, route.name)
            obj = self._store.get(key)
            if obj is None:
                raise self._not_found(rd, route.name)
            meta = obj["metadata"]
            if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
                raise self._conflict(
                    rd,
                    route.name,
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                    f"UID in object meta: {meta.get('uid')}",
                )
            if preconditions.get("resourceVersion") and preconditions[
                "resourceVersion"
            ] != meta.get("resourceVersion"):
                raise self._conflict(
                    rd,
                    route.name,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{preconditions['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
                )
            if dry_run:
                return render(obj, rd)
            result = self._delete_locked(rd, key, propagation)
            if key in self._store:  # finalizers hold it: the apiserver answers with the object
                return render(result, rd)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": route.name,
                "group": rd.group,
                "kind": rd.plural,
                "uid": meta.get("uid"),
            },
        }


# -- helpers ---------------------------------------------------------------------------------


def _json(obj: Obj, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.json_response(obj, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def _write_event(response: aiohttp.web.StreamResponse, event: Obj) -> None:
    await response.write(_dumps(event).encode() + b"\n")


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise _bad_request(f"the body of the request was in an unknown format: {exc}") from exc


def _body_name(body: bytes) -> str | None:
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        return None  # not JSON: the request itself will answer 400
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        name = data["metadata"].get("name")
        return str(name) if name else None
    return None


def _spec_part(obj: Obj) -> Obj:
    """What counts for metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _secret_string_data(secret: Obj) -> None:
    string_data = secret.pop("stringData", None)
    if string_data:
        data = secret.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


__all__ = [
    "ApiError",
    "ContainerConfigError",
    "KubeEmulator",
    "LocalOutcome",
    "RequestRecord",
    "ResourceDef",
    "Route",
    "container_env",
    "expand",
    "parse_label_selector",
    "parse_route",
    "run_container_locally",
]
