"""List, then watch from the list's resourceVersion; relist on 410 Gone.

One ``Informer`` per resource kind keeps a cache of the objects it saw and
calls ``on_event(kind, object)`` for every change (``kind`` is ADDED,
MODIFIED or DELETED; a relist reports objects that vanished meanwhile as
DELETED). A broken or ended stream resumes from the last resourceVersion
seen (bookmarks included), so nothing is missed and nothing is listed
again unless the server says the version is too old.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from reconciler.adapters.kubernetes.client import Gone, KubeClient, Resource
from reconciler.ports import ReconcilerError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name)


def object_key(obj: Obj) -> ObjKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        label_selector: str = "",
        on_event: Callable[[str, Obj], None] | None = None,
        timeout_seconds: int = 300,
        retry_delay: float = 1.0,
    ) -> None:
        self.client = client
        self.resource = resource
        self.label_selector = label_selector
        self.on_event = on_event
        self.timeout_seconds = timeout_seconds
        self.retry_delay = retry_delay
        self.cache: dict[ObjKey, Obj] = {}
        self.resource_version = ""
        self.lists = 0  # how many times it listed (1 + one per 410)
        self.generation = 0  # bumped on every change seen
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"watch-{self.resource.plural}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def cached(self, key: ObjKey) -> Obj | None:
        with self._lock:
            return self.cache.get(key)

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self.cache.values())

    def note(self, obj: Obj) -> None:
        """An object we just wrote: cache it now if it is newer than what we hold."""
        key = object_key(obj)
        with self._lock:
            held = self.cache.get(key)
            if held is None or _rv(held) < _rv(obj):
                self.cache[key] = obj
                self.generation += 1

    def forget(self, key: ObjKey) -> None:
        """An object we just deleted."""
        with self._lock:
            if self.cache.pop(key, None) is not None:
                self.generation += 1

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                self._watch()
            except Gone as exc:
                log.info("watch of %s expired (%s): relisting", self.resource.full_name, exc)
                self.resource_version = ""
            except ReconcilerError as exc:
                self.last_error = str(exc)
                log.warning("watch of %s failed: %s", self.resource.full_name, exc)
                self._stop.wait(self.retry_delay)
            except Exception as exc:  # a bug must not end the watch for good: log it, go on
                self.last_error = repr(exc)
                log.exception("watch of %s broke; listing again", self.resource.full_name)
                self.resource_version = ""
                self._stop.wait(self.retry_delay)

    def _relist(self) -> None:
        items, version = self.client.list(self.resource, label_selector=self.label_selector)
        self.lists += 1
        fresh = {object_key(item): item for item in items}
        with self._lock:
            gone = [obj for key, obj in self.cache.items() if key not in fresh]
            changed = [
                obj
                for key, obj in fresh.items()
                if key not in self.cache or _rv(self.cache[key]) != _rv(obj)
            ]
            self.cache = fresh
            self.generation += 1
        self.resource_version = version
        for obj in gone:
            self._emit("DELETED", obj)
        for obj in changed:
            self._emit("ADDED", obj)
        self.synced.set()

    def _watch(self) -> None:
        for event in self.client.watch(
            self.resource,
            resource_version=self.resource_version,
            label_selector=self.label_selector,
            timeout_seconds=self.timeout_seconds,
            stop=self._stop,
        ):
            kind = str(event.get("type"))
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self.resource_version = version
            if kind == "BOOKMARK":
                continue
            key = object_key(obj)
            with self._lock:
                if kind == "DELETED":
                    self.cache.pop(key, None)
                else:
                    self.cache[key] = obj
                self.generation += 1
            self._emit(kind, obj)
            if self._stop.is_set():
                return

    def _emit(self, kind: str, obj: Obj) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, obj)
        except Exception:  # a bad handler must not end the watch; it is logged with its trace
            log.exception("handling %s %s failed", kind, object_key(obj))


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0
