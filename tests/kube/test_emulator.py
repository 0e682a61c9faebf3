"""The Kubernetes API emulator, driven through the official client over real HTTP."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from tests.kube.emulator import KubeEmulator, parse_label_selector, run_container_locally

GROUP, VERSION, PLURAL = "example.test", "v1", "widgets"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"

WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.test
spec:
  group: example.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
                color: {type: string, enum: [red, blue], default: red}
                tags: {type: array, items: {type: string}}
                extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
            status:
              type: object
              properties:
                phase: {type: string}
"""


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def crd_file(tmp_path: Path) -> Path:
    path = tmp_path / "widgets.yaml"
    path.write_text(WIDGET_CRD)
    return path


@pytest.fixture
def widgets(kube: KubeEmulator, crd_file: Path) -> KubeEmulator:
    kube.load_crds([crd_file])
    return kube


@pytest.fixture
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture
def batch(kube_api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube_api)


@pytest.fixture
def custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def ns(core: client.CoreV1Api) -> str:
    core.create_namespace({"metadata": {"name": "team"}})
    return "team"


def error_of(exc: client.ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    assert body["code"] == exc.status
    return body


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **spec},
    }


def cm(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **extra}, "data": {"k": "v"}}


def job(name: str, command: list[str] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "busybox", "command": command or [], **container}
                    ],
                }
            }
        },
    }


def collect(events: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    """The first ``count`` events as (type, name)."""
    seen: list[tuple[str, str]] = []
    for event in events:
        obj = event["raw_object"]
        seen.append((event["type"], obj.get("metadata", {}).get("name", "")))
        if len(seen) == count:
            break
    return seen


# -- CRUD ------------------------------------------------------------------------------------


def test_crud_with_real_errors(core: client.CoreV1Api, batch: client.BatchV1Api, ns: str) -> None:
    created = core.create_namespaced_config_map(ns, cm("a"))
    meta = created.metadata
    assert meta.namespace == ns
    assert meta.uid
    assert meta.generation == 1
    assert meta.creation_timestamp is not None
    assert int(meta.resource_version) > 0

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("a"))
    assert exc.value.status == 409
    assert error_of(exc.value)["reason"] == "AlreadyExists"
    assert error_of(exc.value)["message"] == 'configmaps "a" already exists'

    with pytest.raises(client.ApiException) as exc:
        batch.read_namespaced_job("nope", ns)
    assert exc.value.status == 404
    assert error_of(exc.value)["message"] == 'jobs.batch "nope" not found'
    assert error_of(exc.value)["details"] == {"name": "nope", "group": "batch", "kind": "jobs"}

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map("missing", cm("a"))
    assert exc.value.status == 404
    assert error_of(exc.value)["message"] == 'namespaces "missing" not found'
    assert error_of(exc.value)["details"] == {"name": "missing", "kind": "namespaces"}

    generated = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}})
    assert generated.metadata.name.startswith("gen-")
    assert len(generated.metadata.name) == 9

    later = core.create_namespaced_config_map(ns, cm("b"))
    assert int(later.metadata.resource_version) > int(meta.resource_version)

    status = core.delete_namespaced_config_map("a", ns)
    assert status["kind"] == "Status"
    assert status["status"] == "Success"  # v37: a plain dict
    assert status["details"]["name"] == "a"
    assert status["details"]["uid"] == meta.uid
    with pytest.raises(client.ApiException) as exc:
        core.delete_namespaced_config_map("a", ns)
    assert exc.value.status == 404

    names = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
    assert names == sorted([generated.metadata.name, "b"])


def test_names_and_labels_are_validated(core: client.CoreV1Api, ns: str) -> None:
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("Bad_Name"))
    body = error_of(exc.value)
    assert exc.value.status == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value'
    )
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("ok", {"app": "x" * 64}))
    assert "must be no more than 63 characters" in error_of(exc.value)["message"]


def test_replace_needs_the_current_resource_version(
    widgets: KubeEmulator, custom: client.CustomObjectsApi, ns: str
) -> None:
    first = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("w"))
    stale = json.loads(json.dumps(first))
    first["spec"]["size"] = 2
    custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w", first)

    stale["spec"]["size"] = 3
    with pytest.raises(client.ApiException) as exc:
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w", stale)
    assert exc.value.status == 409
    assert error_of(exc.value)["reason"] == "Conflict"
    assert error_of(exc.value)["message"] == (
        'Operation cannot be fulfilled on widgets.example.test "w": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    del stale["metadata"]["resourceVersion"]  # custom resources refuse unconditional updates
    with pytest.raises(client.ApiException) as exc:
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w", stale)
    assert exc.value.status == 422
    assert widgets.get("example.test/v1/widgets", ns, "w")["spec"]["size"] == 2  # type: ignore[index]


# -- patches ---------------------------------------------------------------------------------


def test_merge_and_json_patches(kube: KubeEmulator, core: client.CoreV1Api, ns: str) -> None:
    created = core.create_namespaced_config_map(ns, cm("p", {"a": "1", "b": "2"}))
    patched = core.patch_namespaced_config_map(
        "p",
        ns,
        {"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"x": "y"}},
        _content_type=MERGE,
    )
    assert patched.metadata.labels == {"b": "2", "c": "3"}
    assert patched.data == {"k": "v", "x": "y"}

    patched = core.patch_namespaced_config_map(
        "p", ns, [{"op": "replace", "path": "/data/k", "value": "w"}], _content_type=JSON_PATCH
    )
    assert patched.data["k"] == "w"

    # A merge patch carrying a stale resourceVersion is a precondition.
    stale = {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {}}
    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_config_map("p", ns, stale, _content_type=MERGE)
    assert exc.value.status == 409

    # The client sends a dict without a content type as a strategic merge patch.
    patched = core.patch_namespaced_config_map("p", ns, {"data": {"k": "s"}})
    assert patched.data["k"] == "s"
    url = f"{kube.base_url}/api/v1/namespaces/{ns}/configmaps/p"
    refused = urllib3.PoolManager().request(  # a JSON patch must be a list
        "PATCH", url, body=b"{}", headers={"Content-Type": JSON_PATCH}
    )
    assert refused.status == 400

    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_config_map("nope", ns, {"data": {}}, _content_type=MERGE)
    assert exc.value.status == 404


def test_server_side_apply(
    widgets: KubeEmulator, custom: client.CustomObjectsApi, kube_api: client.ApiClient, ns: str
) -> None:
    def apply(body: dict[str, Any], manager: str = "reconciler", **kw: Any) -> dict[str, Any]:
        return custom.patch_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP,
            VERSION,
            ns,
            PLURAL,
            body["metadata"]["name"],
            body,
            field_manager=manager,
            _content_type=APPLY,
            **kw,
        )

    first = widget("s", 2, tags=["a"], extra={"x": 1, "y": 2})
    first["metadata"]["labels"] = {"owned": "yes"}
    # Creating answers 201, which CustomObjectsApi.patch_* (v37) turns into None.
    assert apply(first) is None
    created = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s")
    assert created["spec"] == {"size": 2, "tags": ["a"], "extra": {"x": 1, "y": 2}, "color": "red"}
    assert created["metadata"]["managedFields"][0]["manager"] == "reconciler"
    assert created["metadata"]["managedFields"][0]["operation"] == "Apply"

    # Another manager owns a field of its own.
    apply({**widget("s", 2), "spec": {"size": 2, "extra": {"z": 3}}}, "other")

    # Re-applying without tags/extra.y/the label removes them; other's extra.z stays.
    second = widget("s", 2, extra={"x": 1})
    second["metadata"]["labels"] = {}
    applied = apply(second)
    assert applied["spec"] == {"size": 2, "color": "red", "extra": {"x": 1, "z": 3}}
    assert not applied["metadata"].get("labels")
    assert {m["manager"] for m in applied["metadata"]["managedFields"]} == {"reconciler", "other"}

    # The same apply again is a no-op: no new resourceVersion.
    again = apply(second)
    assert again["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]

    # Changing a field another manager owns: conflict, unless forced.
    with pytest.raises(client.ApiException) as exc:
        apply({**widget("s", 2), "spec": {"size": 2, "extra": {"z": 4}}})
    assert exc.value.status == 409
    assert 'conflict with "other": .spec.extra.z' in error_of(exc.value)["message"]
    forced = apply({**widget("s", 2), "spec": {"size": 2, "extra": {"z": 4}}}, force=True)
    assert forced["spec"]["extra"] == {"z": 4}

    # fieldManager is required; the body may be YAML.
    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "s", widget("s"), _content_type=APPLY
        )
    assert exc.value.status == 422
    url = f"{widgets.base_url}/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/y?fieldManager=m"
    text = "apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: y}\nspec: {size: 5}\n"
    response = urllib3.PoolManager().request(
        "PATCH", url, body=text.encode(), headers={"Content-Type": APPLY}
    )
    assert response.status == 201
    assert json.loads(response.data)["spec"] == {"size": 5, "color": "red"}


# -- status subresource and generation -------------------------------------------------------


def test_status_subresource_and_generation(
    widgets: KubeEmulator, custom: client.CustomObjectsApi, ns: str
) -> None:
    body = {**widget("g"), "status": {"phase": "Ignored"}}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    assert "status" not in created
    assert created["metadata"]["generation"] == 1

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "g", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
    )
    assert with_status["status"] == {"phase": "Ready"}
    assert with_status["spec"]["size"] == 1
    assert with_status["metadata"]["generation"] == 1

    labels = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        "g",
        {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "X"}},
    )
    assert labels["metadata"]["generation"] == 1
    assert labels["status"] == {"phase": "Ready"}

    spec = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "g", {"spec": {"size": 4}}
    )
    assert spec["metadata"]["generation"] == 2
    assert spec["status"] == {"phase": "Ready"}

    fetched = custom.get_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "g")
    assert fetched["spec"]["size"] == 4
    assert fetched["status"] == {"phase": "Ready"}


# -- lists -----------------------------------------------------------------------------------


def test_label_and_field_selectors(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, cm("a", {"app": "web", "tier": "front"}))
    core.create_namespaced_config_map(ns, cm("b", {"app": "db"}))
    core.create_namespaced_config_map(ns, cm("c", {}))
    core.create_namespaced_config_map("default", cm("d", {"app": "web"}))

    def names(**kw: Any) -> list[str]:
        return [c.metadata.name for c in core.list_namespaced_config_map(ns, **kw).items]

    assert names(label_selector="app=web") == ["a"]
    assert names(label_selector="app==db") == ["b"]
    assert names(label_selector="app!=web") == ["b", "c"]
    assert names(label_selector="app in (web, db)") == ["a", "b"]
    assert names(label_selector="app notin (web)") == ["b", "c"]
    assert names(label_selector="app") == ["a", "b"]
    assert names(label_selector="!app") == ["c"]
    assert names(label_selector="app=web,tier=front") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app=web")
    assert [(c.metadata.namespace, c.metadata.name) for c in everywhere.items] == [
        ("default", "d"),
        (ns, "a"),
    ]
    with pytest.raises(client.ApiException) as exc:
        names(label_selector="app in (")
    assert exc.value.status == 400
    with pytest.raises(client.ApiException) as exc:
        names(field_selector="data.k=v")
    assert exc.value.status == 400

    for name, uid in (("e1", "u1"), ("e2", "u2")):
        core.create_namespaced_event(
            ns,
            {
                "metadata": {"name": name},
                "involvedObject": {"kind": "Workflow", "name": "wf", "uid": uid, "namespace": ns},
                "reason": "Started",
            },
        )
    events = core.list_namespaced_event(
        ns, field_selector="involvedObject.kind=Workflow,involvedObject.uid=u2"
    )
    assert [e.metadata.name for e in events.items] == ["e2"]
    assert parse_label_selector("a in (x,y), !b")[0].values == ("x", "y")


def test_pagination(core: client.CoreV1Api, ns: str) -> None:
    for i in range(5):
        core.create_namespaced_config_map(ns, cm(f"c{i}"))
    first = core.list_namespaced_config_map(ns, limit=2)
    assert first.kind == "ConfigMapList"
    assert first.api_version == "v1"
    assert [c.metadata.name for c in first.items] == ["c0", "c1"]
    assert first.metadata.remaining_item_count == 3
    seen = [c.metadata.name for c in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    assert seen == [f"c{i}" for i in range(5)]
    assert first.items[0].kind == "ConfigMap"
    assert first.items[0].api_version == "v1"


# -- watches ---------------------------------------------------------------------------------


def test_watch_from_a_resource_version(core: client.CoreV1Api, ns: str) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, cm("w"))
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "2"}}, _content_type=MERGE)
    core.delete_namespaced_config_map("w", ns)
    core.create_namespaced_config_map(ns, cm("z"))

    stream = watch.Watch().stream(
        core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=5
    )
    assert collect(stream, 4) == [
        ("ADDED", "w"),
        ("MODIFIED", "w"),
        ("DELETED", "w"),
        ("ADDED", "z"),
    ]

    # Without a resourceVersion: the current objects first, then live events.
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, ns, timeout_seconds=5)
    first = next(stream)
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "z")
    core.create_namespaced_config_map(ns, cm("live"))
    assert collect(stream, 1) == [("ADDED", "live")]
    w.stop()


def test_watch_with_a_selector_sees_objects_enter_and_leave(
    core: client.CoreV1Api, ns: str
) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, cm("s", {"app": "x"}))
    core.patch_namespaced_config_map(
        "s", ns, {"metadata": {"labels": {"app": "y"}}}, _content_type=MERGE
    )
    core.create_namespaced_config_map(ns, cm("other", {"app": "y"}))
    core.patch_namespaced_config_map(
        "s", ns, {"metadata": {"labels": {"app": "x"}}}, _content_type=MERGE
    )
    stream = watch.Watch().stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=start,
        label_selector="app=x",
        timeout_seconds=5,
    )
    assert collect(stream, 3) == [("ADDED", "s"), ("DELETED", "s"), ("ADDED", "s")]


def test_watch_gets_410_after_compaction(
    kube: KubeEmulator, core: client.CoreV1Api, ns: str
) -> None:
    old = core.create_namespaced_config_map(ns, cm("old")).metadata.resource_version
    core.create_namespaced_config_map(ns, cm("new"))
    kube.compact()
    with pytest.raises(client.ApiException) as exc:
        for _ in watch.Watch().stream(
            core.list_namespaced_config_map, ns, resource_version=old, timeout_seconds=5
        ):
            pass
    assert exc.value.status == 410
    assert f"too old resource version: {old}" in exc.value.reason

    # Without timeout_seconds the client retries once from the same version, then raises.
    with pytest.raises(client.ApiException) as exc:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=old):
            pass
    assert exc.value.status == 410
    assert kube.count(verb="watch") == 3

    # A small history expires too.
    small = KubeEmulator(history=2)
    for i in range(4):
        small.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"h{i}"}})
    small.start()
    api = small.api_client()
    try:
        events = watch.Watch().stream(
            client.CoreV1Api(api).list_namespaced_config_map,
            "default",
            resource_version="1",
            timeout_seconds=5,
        )
        with pytest.raises(client.ApiException) as exc:
            next(events)
        assert exc.value.status == 410
    finally:
        api.close()
        small.stop()


def test_close_watches_makes_the_client_reconnect(
    kube: KubeEmulator, core: client.CoreV1Api, ns: str
) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    seen: queue.Queue[str] = queue.Queue()
    w = watch.Watch()

    def consume() -> None:
        try:
            for event in w.stream(core.list_namespaced_config_map, ns, resource_version=start):
                seen.put(f"{event['type']} {event['object'].metadata.name}")
        except urllib3.exceptions.ProtocolError:
            pass  # Watch.stop() shuts the socket down under the reading thread

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    kube.wait_for(lambda: kube.watch_count == 1)
    core.create_namespaced_config_map(ns, cm("before"))
    assert seen.get(timeout=5) == "ADDED before"
    kube.close_watches()
    kube.wait_for(lambda: kube.count(verb="watch") == 2 and kube.watch_count == 1)
    core.create_namespaced_config_map(ns, cm("after"))
    assert seen.get(timeout=5) == "ADDED after"
    assert kube.requests[-2].query["resourceVersion"] != start  # resumed from the last event
    w.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_bookmarks(kube: KubeEmulator, core: client.CoreV1Api, ns: str) -> None:
    kube.bookmark_interval = 0.2
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_config_map, ns, allow_watch_bookmarks=True, timeout_seconds=5
    )
    core.create_namespaced_config_map(ns, cm("b"))
    event = next(stream)
    assert event["type"] == "ADDED"
    idle = next(stream)
    assert idle["type"] == "BOOKMARK"
    assert idle["raw_object"]["metadata"]["resourceVersion"] == str(kube.resource_version)
    assert w.resource_version == str(kube.resource_version)
    kube.bookmark_interval = 60
    kube.send_bookmarks()
    assert next(stream)["type"] == "BOOKMARK"
    w.stop()


def test_watch_timeout_seconds_ends_the_stream(core: client.CoreV1Api, ns: str) -> None:
    began = time.monotonic()
    assert list(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=1)) == []
    assert 0.9 < time.monotonic() - began < 3


# -- faults and RBAC -------------------------------------------------------------------------


def test_injected_faults(kube: KubeEmulator, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, cm("f"))

    kube.inject(verb="patch", plural="configmaps", status=409)
    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_config_map("f", ns, {"data": {}}, _content_type=MERGE)
    assert exc.value.status == 409
    assert error_of(exc.value)["reason"] == "Conflict"
    assert "the object has been modified" in error_of(exc.value)["message"]

    kube.inject(verb="create", name="g", status=429, retry_after=2)
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("g"))
    assert exc.value.status == 429
    assert exc.value.headers["Retry-After"] == "2"
    assert error_of(exc.value)["reason"] == "TooManyRequests"
    assert error_of(exc.value)["details"]["retryAfterSeconds"] == 2

    # urllib3 (under the official client) retries a GET answered 429 with Retry-After itself.
    kube.inject(verb="get", name="f", status=429, retry_after=0)
    core.read_namespaced_config_map("f", ns)

    kube.inject(verb="list", status=500, times=2)
    for _ in range(2):
        with pytest.raises(client.ApiException) as exc:
            core.list_namespaced_config_map(ns)
        assert exc.value.status == 500
        assert error_of(exc.value)["reason"] == "InternalError"
    core.list_namespaced_config_map(ns)  # depleted

    kube.inject(verb="create", name="x", status=503, message="etcd is down")
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("x"))
    assert error_of(exc.value)["message"] == "etcd is down"

    # A slow answer does not hold up the others.
    kube.inject(verb="get", status=0, delay=1.0)
    slow: list[float] = []

    def slow_get() -> None:
        began = time.monotonic()
        core.read_namespaced_config_map("f", ns)
        slow.append(time.monotonic() - began)

    thread = threading.Thread(target=slow_get)
    thread.start()
    time.sleep(0.1)
    began = time.monotonic()
    core.list_namespaced_config_map(ns)
    assert time.monotonic() - began < 0.5
    thread.join(5)
    assert slow
    assert slow[0] >= 0.9
    statuses = [r.status for r in kube.requests if r.verb == "get"]
    assert statuses == [429, 200, 200]
    assert kube.count(plural="configmaps", write=True) == 4
    kube.reset_counts()
    assert kube.count() == 0


def test_denied_verbs_answer_403(
    widgets: KubeEmulator, custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str
) -> None:
    widgets.deny("list", PLURAL, group=GROUP)
    with pytest.raises(client.ApiException) as exc:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert exc.value.status == 403
    assert error_of(exc.value)["reason"] == "Forbidden"
    assert error_of(exc.value)["message"] == (
        'widgets.example.test is forbidden: User "system:serviceaccount:test:reconciler" cannot '
        'list resource "widgets" in API group "example.test" at the cluster scope'
    )
    widgets.deny("create", "configmaps")
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, cm("d"))
    assert error_of(exc.value)["message"].endswith(
        'cannot create resource "configmaps" in API group "" in the namespace "team"'
    )
    widgets.allow("list", PLURAL, group=GROUP)
    assert custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"] == []


# -- deletes ---------------------------------------------------------------------------------


def test_cascading_delete(kube: KubeEmulator, core: client.CoreV1Api, ns: str) -> None:
    def owned_by(name: str, owner: Any) -> dict[str, Any]:
        ref = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
        }
        return cm(name, ownerReferences=[ref])

    root = core.create_namespaced_config_map(ns, cm("root"))
    child = core.create_namespaced_config_map(ns, owned_by("child", root))
    core.create_namespaced_config_map(ns, owned_by("grandchild", child))
    core.delete_namespaced_config_map("root", ns, propagation_policy="Background")
    assert kube.objects("configmaps", ns) == []

    root = core.create_namespaced_config_map(ns, cm("root"))
    core.create_namespaced_config_map(ns, owned_by("kept", root))
    core.delete_namespaced_config_map("root", ns, body={"propagationPolicy": "Orphan"})
    kept = kube.objects("configmaps", ns)
    assert [c["metadata"]["name"] for c in kept] == ["kept"]
    assert "ownerReferences" not in kept[0]["metadata"]

    with pytest.raises(client.ApiException) as exc:
        core.delete_namespaced_config_map("kept", ns, body={"preconditions": {"uid": "other"}})
    assert exc.value.status == 409
    assert "Precondition failed" in error_of(exc.value)["message"]

    core.delete_namespace(ns)
    assert kube.objects("configmaps", ns) == []
    assert kube.get("v1/namespaces", None, ns) is None


def test_finalizers_hold_deletion(kube: KubeEmulator, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, cm("held", finalizers=["example.test/cleanup"]))
    core.delete_namespaced_config_map("held", ns)
    held = core.read_namespaced_config_map("held", ns)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map(
        "held", ns, {"metadata": {"finalizers": None}}, _content_type=MERGE
    )
    assert kube.get("configmaps", ns, "held") is None


# -- CRDs ------------------------------------------------------------------------------------


def test_crds_register_and_validate(
    widgets: KubeEmulator, custom: client.CustomObjectsApi, kube_api: client.ApiClient, ns: str
) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, widget("v", 3, unknown="dropped", extra={"any": {"thing": 1}})
    )
    assert created["spec"] == {"size": 3, "color": "red", "extra": {"any": {"thing": 1}}}
    assert created["kind"] == "Widget"
    assert created["apiVersion"] == "example.test/v1"

    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, {**widget("bad"), "spec": {"size": "big", "color": "green"}}
        )
    body = error_of(exc.value)
    assert exc.value.status == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('Widget.example.test "bad" is invalid: [')
    causes = {c["field"]: c for c in body["details"]["causes"]}
    assert causes["spec.size"]["message"].startswith(
        'Invalid value: "big": spec.size in body must be of type integer'
    )
    assert causes["spec.color"]["reason"] == "FieldValueNotSupported"

    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, {**widget("none"), "spec": {}}
        )
    assert error_of(exc.value)["details"]["causes"][0] == {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.size",
    }
    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "v", {"spec": {"size": 0}}
        )
    assert exc.value.status == 422

    # A CRD created through the API is served right away; deleting it removes its objects.
    ext = client.ApiextensionsV1Api(kube_api)
    crd = json.loads(
        json.dumps(widgets.get("customresourcedefinitions", None, "widgets.example.test"))
    )
    crd["metadata"] = {"name": "gadgets.example.test"}
    crd["spec"]["names"] = {"plural": "gadgets", "kind": "Gadget"}
    made = ext.create_custom_resource_definition(crd)
    assert [c.type for c in made.status.conditions] == ["NamesAccepted", "Established"]
    custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, "gadgets", {**widget("g"), "kind": "Gadget"}
    )
    assert [g["metadata"]["name"] for g in widgets.objects("gadgets")] == ["g"]
    ext.delete_custom_resource_definition("gadgets.example.test")
    with pytest.raises(client.ApiException) as exc:
        custom.list_namespaced_custom_object(GROUP, VERSION, ns, "gadgets")
    assert exc.value.status == 404
    assert error_of(exc.value)["message"] == "the server could not find the requested resource"

    groups = client.ApisApi(kube_api).get_api_versions().groups
    assert "example.test" in {g.name for g in groups}
    resources = client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION).resources
    assert {r.name for r in resources} >= {"widgets", "widgets/status"}


# -- Jobs ------------------------------------------------------------------------------------


def test_job_success_and_pod_log(
    kube: KubeEmulator, batch: client.BatchV1Api, core: client.CoreV1Api, ns: str
) -> None:
    kube.job_outcome = lambda job: (0, f"hello from {job['metadata']['name']}\n")
    created = batch.create_namespaced_job(ns, job("ok"))
    assert created.spec.backoff_limit == 6
    assert created.spec.template.metadata.labels["job-name"] == "ok"
    done = kube.wait_for(lambda: _finished(batch.read_namespaced_job("ok", ns)))
    assert [c.type for c in done.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert done.status.succeeded == 1
    assert done.status.active is None
    assert done.status.completion_time is not None
    assert done.status.start_time is not None
    pods = core.list_namespaced_pod(ns, label_selector="batch.kubernetes.io/job-name=ok").items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.metadata.name.startswith("ok-")
    assert len(pod.metadata.name) == 8
    assert pod.metadata.labels["controller-uid"] == created.metadata.uid
    assert pod.metadata.owner_references[0].uid == created.metadata.uid
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "hello from ok\n"
    assert (
        core.read_namespaced_pod_log(pod.metadata.name, ns, container="main") == "hello from ok\n"
    )
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_pod_log(pod.metadata.name, ns, container="other")
    assert exc.value.status == 400


def test_job_failure_and_deletion(
    kube: KubeEmulator, batch: client.BatchV1Api, core: client.CoreV1Api, ns: str
) -> None:
    kube.job_outcome = lambda job: (3, "boom\n")
    batch.create_namespaced_job(ns, job("bad"))
    failed = kube.wait_for(lambda: _finished(batch.read_namespaced_job("bad", ns)))
    assert [(c.type, c.reason) for c in failed.status.conditions] == [
        ("FailureTarget", "BackoffLimitExceeded"),
        ("Failed", "BackoffLimitExceeded"),
    ]
    assert failed.status.failed == 1
    pod = core.list_namespaced_pod(ns).items[0]
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3

    # Deleted while running: the simulation stops, Background deletion collects the pod.
    kube.job_duration = 30
    batch.create_namespaced_job(ns, job("slow"))
    kube.wait_for(lambda: len(kube.objects("pods", ns)) == 2)
    batch.delete_namespaced_job("slow", ns, propagation_policy="Background")
    assert [p["metadata"]["name"] for p in kube.objects("pods", ns)] == [pod.metadata.name]

    # batch/v1 Jobs orphan their pods by default, as the real API server does.
    batch.delete_namespaced_job("bad", ns)
    assert kube.objects("pods", ns)[0]["metadata"].get("ownerReferences") is None

    with pytest.raises(client.ApiException) as exc:
        batch.create_namespaced_job(
            ns,
            {
                **job("norestart"),
                "spec": {
                    "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}
                },
            },
        )
    assert exc.value.status == 422
    assert "spec.template.spec.restartPolicy: Required value" in error_of(exc.value)["message"]
    with pytest.raises(client.ApiException) as exc:
        batch.patch_namespaced_job("bad2", ns, {}, _content_type=MERGE)
    assert exc.value.status == 404


def test_jobs_wait_without_an_outcome_and_finish_by_hand(
    kube: KubeEmulator, batch: client.BatchV1Api, core: client.CoreV1Api, ns: str
) -> None:
    batch.create_namespaced_job(ns, job("manual"))
    time.sleep(0.1)
    assert kube.objects("pods", ns) == []
    kube.finish_job(ns, "manual", 0, "by hand\n")
    finished = batch.read_namespaced_job("manual", ns)
    assert finished.status.succeeded == 1
    pod = core.list_namespaced_pod(ns).items[0]
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "by hand\n"


def test_jobs_run_locally_with_env_expansion_and_secrets(
    kube: KubeEmulator, batch: client.BatchV1Api, core: client.CoreV1Api, ns: str
) -> None:
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    kube.job_outcome = kube.local_outcome()
    script = (
        "import os, sys; print(sys.argv[1:]); print(os.environ['TOKEN'], os.environ['GREETING'])"
    )
    env = [
        {"name": "NAME", "value": "world"},
        {"name": "GREETING", "value": "hello $(NAME)"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    batch.create_namespaced_job(
        ns,
        job(
            "local",
            [sys.executable, "-c", script],
            args=["$(GREETING)", "$$(NAME)", "$(UNKNOWN)"],
            env=env,
        ),
    )
    done = kube.wait_for(lambda: _finished(batch.read_namespaced_job("local", ns)))
    assert done.status.succeeded == 1
    pod = core.list_namespaced_pod(ns).items[0]
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == (
        "['hello world', '$(NAME)', '$(UNKNOWN)']\ns3cr3t hello world\n"
    )

    # A missing secret holds the pod in CreateContainerConfigError, as a kubelet does.
    absent = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    batch.create_namespaced_job(ns, job("held", [sys.executable, "-c", "print(1)"], env=absent))
    pods = kube.wait_for(lambda: pods_of(kube, ns, "held"))
    assert pods[0]["status"]["phase"] == "Pending"
    assert pods[0]["status"]["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": 'secret "absent" not found',
    }
    time.sleep(0.1)
    assert batch.read_namespaced_job("held", ns).status.active == 1
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_pod_log(pods[0]["metadata"]["name"], ns)
    assert exc.value.status == 400
    assert "is waiting to start: CreateContainerConfigError" in error_of(exc.value)["message"]

    kube.job_outcome = kube.local_outcome(hold_on_config_error=False)
    batch.create_namespaced_job(ns, job("fails", [sys.executable, "-c", "print(1)"], env=absent))
    failed = kube.wait_for(lambda: _finished(batch.read_namespaced_job("fails", ns)))
    assert failed.status.failed == 1
    log = core.read_namespaced_pod_log(pods_of(kube, ns, "fails")[0]["metadata"]["name"], ns)
    assert log == 'Error: secret "absent" not found (CreateContainerConfigError)\n'

    missing = job(
        "missing",
        [sys.executable, "-c", "print('never')"],
        env=[
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}},
        ],
    )
    code, text = run_container_locally(missing, lambda ns, name, key: None)
    assert code == 1
    assert "nope" in text
    assert "creds" in text
    assert run_container_locally(job("fails", ["false"]), lambda *a: None) == (1, "")


def pods_of(kube: KubeEmulator, namespace: str, job_name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.objects("pods", namespace)
        if p["metadata"]["labels"]["job-name"] == job_name
    ]


def _finished(job_obj: Any) -> Any:
    conditions = job_obj.status.conditions or []
    return job_obj if any(c.type in ("Complete", "Failed") for c in conditions) else None


# -- test-side access ------------------------------------------------------------------------


def test_put_get_objects_emit_events(kube: KubeEmulator, core: client.CoreV1Api) -> None:
    start = core.list_namespaced_config_map("seeded").metadata.resource_version
    stored = kube.put(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "seeded"}}
    )
    assert stored["metadata"]["resourceVersion"]
    assert stored["metadata"]["uid"]
    assert kube.get("v1/namespaces", None, "seeded") is not None  # created on the way
    kube.put({**stored, "data": {"a": "b"}})
    got = kube.get("v1/configmaps", "seeded", "s")
    assert got is not None
    assert got["data"] == {"a": "b"}
    assert got["metadata"]["uid"] == stored["metadata"]["uid"]
    assert [o["metadata"]["name"] for o in kube.objects("configmaps")] == ["s"]
    stream = watch.Watch().stream(
        core.list_namespaced_config_map, "seeded", resource_version=start, timeout_seconds=5
    )
    assert collect(stream, 2) == [("ADDED", "s"), ("MODIFIED", "s")]
