"""One list and one watch of a namespace's RayJobs per triggerer event loop, however many triggers wait.

A backfill defers hundreds of job waits on one triggerer. Watched one by one, each holds its own watch
and lists its own object again after every change: N watches and N lists for N tasks against the
Kubernetes API. A :class:`RayJobWatch` is shared, within one event loop, by every wait on RayJobs of
one namespace through one Kubernetes connection: it lists the provider's RayJobs there once
(``managed-by`` label), then watches them from that ``resourceVersion``, and wakes only the waits on the
object that changed. A watch the API server ends (its ``timeoutSeconds``) is resumed from the last
version seen; a 410 Gone (the version was compacted) lists again. The watch holds no state a trigger
needs to keep: a triggerer restart rebuilds it from the triggers' first waits. It stops a while after
its last wait ends (``IDLE_SECONDS``), so waits in quick succession share it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from airflow_ray_platform.backends.base import BackendError
from airflow_ray_platform.backends.kuberay.manifests import GROUP, VERSION
from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE

PLURAL = "rayjobs"
#: How long the API server keeps one watch open before it is resumed (a call every this many seconds).
WATCH_SECONDS = 300
#: How long the watch outlives its last wait (the next wait of a trigger that just read its log).
IDLE_SECONDS = 30.0
#: The wait between attempts after the API server failed a list or a watch.
RETRY_SECONDS = 2.0
T = TypeVar("T")


class RayJobWatch:
    """The provider's RayJobs of one namespace, kept current by one watch, for every wait of this loop.

    :param get_conn: the async Kubernetes hook's ``get_conn`` (an async context manager yielding an API
        client): the first asker's, like any of them.
    :param namespace: the namespace watched.
    """

    _shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], RayJobWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, key: tuple[str, str], get_conn: Callable[[], Any]) -> None:
        self.key = key
        self.namespace = key[1]
        self._get_conn = get_conn
        self._objects: dict[str, dict[str, Any]] = {}
        self._synced = asyncio.Event()
        self._error: BackendError | None = None
        self._changes: dict[str, list[asyncio.Future[None]]] = {}
        self._waits = 0
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    @classmethod
    def shared(cls, kubernetes_conn_id: str, namespace: str, get_conn: Callable[[], Any]) -> RayJobWatch:
        """This event loop's watch of ``namespace`` through ``kubernetes_conn_id``, made on first use."""
        watches = cls._shared.setdefault(asyncio.get_running_loop(), {})
        key = (kubernetes_conn_id, namespace)
        if key not in watches:
            watches[key] = cls(key, get_conn)
        return watches[key]

    async def await_change(
        self, name: str, timeout: float, read: Callable[[dict[str, Any]], T], settled: Callable[[T], bool]
    ) -> T | None:
        """``read(RayJob name)`` once its state changes, at once when ``settled``, the latest after
        ``timeout``; None if there is no such RayJob (or it was deleted)."""
        self._waits += 1
        self._start()
        try:
            await self._synced.wait()
            self._raise_error()
            obj = self._objects.get(name) or await self._read_missing(name)
            if obj is None:
                return None
            current = read(obj)
            if settled(current) or timeout <= 0:
                return current
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                change = loop.create_future()
                waiting = self._changes.setdefault(name, [])
                waiting.append(change)
                try:
                    await asyncio.wait_for(change, remaining)
                except TimeoutError:
                    waiting.remove(change)  # a long quiet job leaves no expired waits behind
                self._raise_error()
                obj = self._objects.get(name)
                if obj is None:
                    return None
                latest = read(obj)
                if getattr(latest, "state", None) != getattr(current, "state", None):
                    return latest
                current = latest
            return current
        finally:
            self._waits -= 1
            if not self._waits:
                self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._stop_if_idle)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _start(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rayjob-watch-{self.namespace}")

    def _stop_if_idle(self) -> None:
        if self._waits:
            return
        if self._task is not None:
            self._task.cancel()
        watches = self._shared.get(asyncio.get_running_loop(), {})
        if watches.get(self.key) is self:
            del watches[self.key]

    def _wake(self, name: str | None = None) -> None:
        """Wake the waits on ``name`` (None: every wait, for an error or a fresh listing)."""
        names = list(self._changes) if name is None else [name]
        for each in names:
            for change in self._changes.pop(each, []):
                if not change.done():
                    change.set_result(None)

    async def _read_missing(self, name: str) -> dict[str, Any] | None:
        """A RayJob the watch has not delivered yet (created a moment ago): one read of it."""
        from kubernetes_asyncio import client as async_client
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            async with self._get_conn() as api_client:
                obj = await async_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                )
        except ApiException as error:
            if error.status == 404:
                return None
            raise BackendError(f"reading RayJob {name!r}: {error.reason} ({error.status})") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BackendError(f"reading RayJob {name!r}: Kubernetes API unreachable: {error!r}") from None
        if (obj["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
            return obj  # not one this watch follows: read, never cached
        self._objects.setdefault(name, obj)
        return self._objects[name]

    async def _run(self) -> None:
        """List, then watch from the listing's version until cancelled; relist after a 410 or an error."""
        from kubernetes_asyncio import client as async_client
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        while True:
            try:
                async with self._get_conn() as api_client:
                    custom = async_client.CustomObjectsApi(api_client)
                    listing = await custom.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, label_selector=selector
                    )
                    self._objects = {obj["metadata"]["name"]: obj for obj in listing["items"]}
                    version = listing["metadata"]["resourceVersion"]
                    self._error = None
                    self._synced.set()
                    self._wake()
                    while True:
                        async with watch.Watch().stream(
                            custom.list_namespaced_custom_object,
                            GROUP,
                            VERSION,
                            self.namespace,
                            PLURAL,
                            label_selector=selector,
                            resource_version=version,
                            timeout_seconds=WATCH_SECONDS,
                        ) as events:
                            async for event in events:
                                obj = event["raw_object"]
                                name = obj["metadata"]["name"]
                                version = obj["metadata"].get("resourceVersion") or version
                                if event["type"] == "DELETED":
                                    self._objects.pop(name, None)
                                else:
                                    self._objects[name] = obj
                                self._wake(name)
            except ApiException as error:
                if error.status == 410:  # the version is gone from the API server's history: list again
                    continue
                self._fail(f"watching RayJobs in {self.namespace!r}: {error.reason} ({error.status})")
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                self._fail(f"watching RayJobs in {self.namespace!r}: Kubernetes API unreachable: {error!r}")
            await asyncio.sleep(RETRY_SECONDS)

    def _fail(self, message: str) -> None:
        """Hand the failure to every wait (each counts it as its trigger counts errors); then list again."""
        self._error = BackendError(message)
        self._synced.set()
        self._wake()
