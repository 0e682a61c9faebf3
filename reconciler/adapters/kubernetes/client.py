"""HTTP to the Kubernetes API through the official client, with retries and typed errors.

Every request of the backend, the step runner and the leader elector goes
through ``KubeClient.request`` (plain dicts in, plain dicts out) or
``KubeClient.watch``. Library types stop here:

- 429 and 5xx answers, and connection faults, are retried with exponential
  backoff; a ``Retry-After`` header sets the wait (capped). What still fails
  is a ``TransientError``.
- 403 is a ``TerminalError`` naming the verb, the resource and the
  namespace the service account needs (and where the RBAC lives).
- 404 for a whole resource (the API server does not know it: a CRD is not
  installed) is a ``TerminalError`` naming what to install; 404 for one
  object is ``NotFound``; 409 is ``Conflict`` (the callers re-read and retry,
  or treat "already exists" as success).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config import incluster_config as k8s_incluster

from reconciler.core.backoffs import Backoff
from reconciler.ports import TerminalError, TransientError

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

DEFAULT_BACKOFF = Backoff(base=0.2, cap=10.0, attempts=6)
INSTALL_HINT = "install it with: kubectl apply -k deploy/ (or kubectl apply -f deploy/crds/)"
RBAC_HINT = "grant it in the reconciler's ClusterRole/Role (deploy/rbac.yaml)"

Obj = dict[str, Any]


class NotFound(TerminalError):  # noqa: N818 - named after the API's reason
    """The object does not exist."""


class Conflict(TerminalError):  # noqa: N818 - named after the API's reason
    """409: already exists, or a resourceVersion precondition failed."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # AlreadyExists or Conflict

    @property
    def already_exists(self) -> bool:
        return self.reason == "AlreadyExists"


class Gone(TransientError):  # noqa: N818 - named after the API's reason
    """410: a watch resourceVersion too old; relist."""


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def full_name(self) -> str:
        """As RBAC and error messages name it: ``workflows.reconciler.dev``, ``jobs.batch``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
PODS = Resource("", "v1", "pods", "Pod")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
JOBS = Resource("batch", "v1", "jobs", "Job")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")

_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def load_api_client(
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
    service_account: Path = SERVICE_ACCOUNT,
    environ: Mapping[str, str] | None = None,
) -> k8s.ApiClient:
    """In a pod (a service account token and KUBERNETES_SERVICE_HOST) and without a
    kubeconfig: the in-cluster config, token refreshed as it rotates; else a kubeconfig."""
    configuration = k8s.Configuration()
    env = dict(os.environ if environ is None else environ)
    in_cluster = (
        kubeconfig is None
        and (service_account / "token").is_file()
        and bool(env.get("KUBERNETES_SERVICE_HOST"))
    )
    try:
        if in_cluster:
            k8s_incluster.InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(service_account / "token"),
                cert_filename=str(service_account / "ca.crt"),
                environ=env,
            ).load_and_set(configuration)
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
            )
    except (k8s_config.ConfigException, OSError) as exc:
        where = (
            "the pod's service account"
            if in_cluster
            else (kubeconfig or "~/.kube/config or $KUBECONFIG")
        )
        raise TerminalError(
            f"no usable Kubernetes configuration ({where}): {exc}; pass --kubeconfig, or run "
            "in a pod with a service account"
        ) from exc
    return k8s.ApiClient(configuration)


class KubeClient:
    """Requests to the API server as dicts; see the module docstring for the error rules."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_retry_after: float = 30.0,
    ) -> None:
        self.api = api
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_retry_after = max_retry_after
        self._lock = threading.Lock()
        self.requests = 0  # every HTTP request sent, retries included
        self.writes = 0  # of which create/update/patch/delete

    # -- plain requests -----------------------------------------------------------

    def request(
        self,
        method: str,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        sub: str = "",
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Obj:
        """One API call, retried on 429/5xx/connection faults; the answer's JSON."""
        raw = self._send(
            method,
            resource,
            namespace=namespace,
            name=name,
            sub=sub,
            query=query,
            body=body,
            content_type=content_type,
        )
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise TransientError(f"{method} {resource.full_name}: not JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise TransientError(f"{method} {resource.full_name}: not a JSON object")
        return decoded

    def text(
        self,
        resource: Resource,
        *,
        namespace: str,
        name: str,
        sub: str,
        query: Mapping[str, str | int | bool] | None = None,
    ) -> bytes:
        """A GET whose answer is not JSON (a pod's log)."""
        return self._send("GET", resource, namespace=namespace, name=name, sub=sub, query=query)

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource, namespace=namespace, name=name)
        except NotFound:
            return None

    def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        page_size: int = 500,
    ) -> tuple[list[Obj], str]:
        """Every matching object (all pages) and the list's resourceVersion."""
        items: list[Obj] = []
        token = ""
        while True:
            query: dict[str, str | int | bool] = {"limit": page_size}
            if label_selector:
                query["labelSelector"] = label_selector
            if field_selector:
                query["fieldSelector"] = field_selector
            if token:
                query["continue"] = token
            page = self.request("GET", resource, namespace=namespace, query=query)
            items.extend(page.get("items") or ())
            metadata = page.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return items, str(metadata.get("resourceVersion") or "")

    def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        return self.request("POST", resource, namespace=namespace, body=body)

    def merge_patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Obj,
        *,
        sub: str = "",
        field_manager: str | None = None,
    ) -> Obj:
        query: dict[str, str | int | bool] = {}
        if field_manager:
            query["fieldManager"] = field_manager
        return self.request(
            "PATCH",
            resource,
            namespace=namespace,
            name=name,
            sub=sub,
            body=patch,
            query=query,
            content_type=MERGE_PATCH,
        )

    def apply(
        self, resource: Resource, namespace: str | None, name: str, body: Obj, *, manager: str
    ) -> Obj:
        """Server-side apply under ``manager``, taking over conflicting fields (force)."""
        return self.request(
            "PATCH",
            resource,
            namespace=namespace,
            name=name,
            body=body,
            query={"fieldManager": manager, "force": "true"},
            content_type=APPLY_PATCH,
        )

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete (dependents by garbage collection); False when it was not there.

        With ``uid`` the delete only happens to that very object (a precondition), so a
        newer object of the same name is never deleted by mistake.
        """
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", resource, namespace=namespace, name=name, body=body)
        except NotFound:
            return False
        return True

    # -- watch ----------------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        label_selector: str = "",
        timeout_seconds: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[Obj]:
        """Events after resource_version, across namespaces, until the server ends the stream.

        Raises Gone (410) when the version is too old: relist, then watch again.
        """
        query: dict[str, str | int | bool] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        try:
            response = self._open(
                "GET", resource, query=query, timeout=(10.0, timeout_seconds + 30.0), stream=True
            )
        except _Retryable as fault:  # 429, 5xx, no connection: the informer tries again
            raise TransientError(f"watch {resource.full_name}: {fault}") from fault
        try:
            buffer = b""
            for chunk in response.stream(4096, decode_content=True):
                if stop is not None and stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        if status.get("code") == 410:
                            raise Gone(f"watch {resource.full_name}: {status.get('message')}")
                        raise TransientError(
                            f"watch {resource.full_name}: {status.get('code')} "
                            f"{status.get('reason')}: {status.get('message')}"
                        )
                    yield event
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise TransientError(f"watch {resource.full_name} broke: {exc}") from exc
        finally:
            response.release_conn()

    # -- internals ----------------------------------------------------------------

    def _send(
        self,
        method: str,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        sub: str = "",
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> bytes:
        attempt = 0
        while True:
            try:
                response = self._open(
                    method,
                    resource,
                    namespace=namespace,
                    name=name,
                    sub=sub,
                    query=query,
                    body=body,
                    content_type=content_type,
                    timeout=self.timeout,
                )
                data: bytes = response.data
                return data
            except _Retryable as fault:
                if not self.backoff.should_retry(attempt):
                    raise TransientError(
                        f"{method} {resource.full_name}: {fault} (after {attempt + 1} tries)"
                    ) from fault
                delay = self.backoff.delay(attempt, spread=self.rng.random())
                if fault.retry_after is not None:
                    delay = min(max(fault.retry_after, 0.0), self.max_retry_after)
                log.info("retrying %s %s in %.1fs: %s", method, resource.full_name, delay, fault)
                self.sleep(delay)
                attempt += 1

    def _open(
        self,
        method: str,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        sub: str = "",
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float | tuple[float, float],
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        path = resource.path(namespace, name, sub)
        headers = {"Accept": "application/json, */*"}
        if body is not None:
            headers["Content-Type"] = content_type
        method_, url, headers_, body_, _post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, _query_value(v)) for k, v in (query or {}).items()],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        with self._lock:
            self.requests += 1
            if method != "GET":
                self.writes += 1
        try:
            response = self.api.rest_client.pool_manager.request(
                method_,
                url,
                body=json.dumps(body_) if body_ is not None else None,
                headers=headers_,
                timeout=_timeout(timeout),
                preload_content=not stream,
                retries=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(f"cannot reach the API server: {exc}") from exc
        if 200 <= response.status < 300:
            return response
        data = response.data if not stream else response.read()
        if stream:
            response.release_conn()
        watching = bool(query and query.get("watch"))
        self._raise(method, resource, namespace, name, sub, response, data, watching=watching)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise(
        self,
        method: str,
        resource: Resource,
        namespace: str | None,
        name: str | None,
        sub: str,
        response: urllib3.BaseHTTPResponse,
        data: bytes,
        *,
        watching: bool,
    ) -> None:
        status = _status_body(data)
        message = str(status.get("message") or data[:300].decode(errors="replace"))
        reason = str(status.get("reason") or "")
        what = f"{resource.full_name}{'/' + sub if sub else ''}"
        verb = _VERBS.get(method, method.lower())
        if name is None and method == "GET":
            verb = "watch" if watching else "list"
        where = f"in namespace {namespace!r}" if namespace else "cluster-wide"
        code = response.status
        if code == 429 or code >= 500:
            raise _Retryable(f"{code} {reason or 'error'}: {message}", _retry_after(response))
        if code == 403:
            raise TerminalError(
                f"forbidden: the reconciler may not {verb} {what} {where} ({message}); {RBAC_HINT}"
            )
        if code == 401:
            raise TerminalError(f"unauthorized by the API server: {message}; check the credentials")
        if code == 404:
            if reason == "NotFound" and (status.get("details") or {}).get("name"):
                kind = (status.get("details") or {}).get("kind") or resource.plural
                if kind == "namespaces" and resource.plural != "namespaces":
                    raise NamespaceMissing(f"namespace {namespace!r} does not exist")
                raise NotFound(message)
            if reason == "NotFound" and name is not None:
                raise NotFound(message)
            raise TerminalError(
                f"the API server does not serve {what} ({resource.api_version}): "
                f"is its CustomResourceDefinition installed? {INSTALL_HINT}"
            )
        if code == 409 and method == "POST" and reason != "AlreadyExists":
            # nothing to re-read for a create (a ResourceQuota update that lost a race): retry
            raise _Retryable(f"{code} {reason or 'Conflict'}: {message}")
        if code == 409:
            raise Conflict(f"{what} {name or ''}: {message}".strip(), reason=reason or "Conflict")
        if code == 410:
            raise Gone(message)
        if code == 422:
            raise TerminalError(f"the API server refused {what} {name or ''}: {message}")
        raise TerminalError(f"{method} {what} {name or ''}: {code} {reason}: {message}")


class NamespaceMissing(NotFound):
    """The namespace of a namespaced request does not exist."""


class _Retryable(Exception):  # noqa: N818 - internal signal
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _status_body(data: bytes) -> Obj:
    try:
        decoded = json.loads(data)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) and decoded.get("kind") == "Status" else {}


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _timeout(value: float | tuple[float, float]) -> urllib3.Timeout:
    if isinstance(value, tuple):
        return urllib3.Timeout(connect=value[0], read=value[1])
    return urllib3.Timeout(total=value)


__all__ = [
    "APPLY_PATCH",
    "CONFIGMAPS",
    "EVENTS",
    "JOBS",
    "LEASES",
    "MERGE_PATCH",
    "NAMESPACES",
    "PODS",
    "PVCS",
    "Conflict",
    "Gone",
    "KubeClient",
    "NamespaceMissing",
    "NotFound",
    "Resource",
    "load_api_client",
]
