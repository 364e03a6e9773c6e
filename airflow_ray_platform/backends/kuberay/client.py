"""The Kubernetes API as the kuberay backend uses it: ``ray.io/v1`` objects, pods and one Secret, in one namespace.

Credentials come from the cncf-kubernetes provider's hooks (``KubernetesHook``, ``AsyncKubernetesHook``:
in-cluster, kubeconfig, context, namespace); nothing here loads credentials another way. Every call turns
the client's exceptions into a :class:`BackendError` carrying the API server's own reason, never the
request (which holds credentials). Speaking RayCluster and RayJob is the backend's; this module only
knows plurals, names, labels and ``resourceVersion``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from airflow_ray_platform.backends.base import BackendError, ClusterBusyError, ClusterNotFoundError
from airflow_ray_platform.backends.kuberay.manifests import GROUP, VERSION
from airflow_ray_platform.backends.kuberay.schema import validate_manifest
from airflow_ray_platform.backends.retries import MAX_CONFLICTS, ConcurrentChange, on_conflict

T = TypeVar("T")
#: What an object of each plural is called in messages.
KINDS = {"rayclusters": "RayCluster", "rayjobs": "RayJob"}


def api_error_reason(error: ApiException) -> str:
    """The API server's own message (a Status body), never the request (which holds credentials)."""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(error.body or "")
        return f"{body.get('reason') or error.reason} ({error.status}): {body.get('message')}"
    return f"{error.reason} ({error.status})"


def is_missing_resource_type(error: ApiException) -> bool:
    """A 404 for the collection itself (no ``details.name``): the CRD is not installed."""
    if error.status != 404:
        return False
    with contextlib.suppress(ValueError, TypeError):
        return not (json.loads(error.body or "").get("details") or {}).get("name")
    return False


class KubeRayClient:
    """One Kubernetes connection's view of one namespace.

    :param kubernetes_conn_id: the cncf-kubernetes provider's connection.
    :param namespace: where the objects live; defaults to the connection's namespace, then ``default``.
    :param validate_manifests: check each manifest against the vendored CRD schema before creating it
        (the API server is also asked for strict field validation).
    """

    def __init__(
        self, kubernetes_conn_id: str, namespace: str | None = None, *, validate_manifests: bool = True
    ) -> None:
        self.kubernetes_conn_id = kubernetes_conn_id
        self._namespace = namespace
        self.validate_manifests = validate_manifests

    @cached_property
    def hook(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def async_hook(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        return AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def namespace(self) -> str:
        return self._namespace or self.hook.get_namespace() or "default"

    async def async_namespace(self) -> str:
        return self._namespace or await asyncio.to_thread(lambda: self.namespace)  # may read the connection

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.hook.api_client)

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.hook.api_client)

    def call(self, doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)``; the API server unreachable, or the CRDs missing, is a BackendError
        saying so. Other API errors are raised for the caller, which knows what a 404 or 409 means."""
        try:
            return function(*args, **kwargs)
        except ApiException as error:
            if is_missing_resource_type(error):
                raise BackendError(
                    f"{doing}: the KubeRay CRDs (ray.io/v1 RayCluster, RayJob) are not installed in the "
                    f"Kubernetes cluster of connection {self.kubernetes_conn_id!r}; install the KubeRay "
                    "operator (v1.7 or later; v1.5.1 with ray_auth 'secret') first: this provider never installs it"
                ) from None
            raise
        except (HTTPError, OSError) as error:
            raise BackendError(f"{doing}: Kubernetes API unreachable: {error}") from None

    # ------------------------------------------------------------------ ray.io objects
    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        doing = f"reading {plural} {name!r}"
        try:
            return self.call(
                doing, self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise BackendError(f"{doing}: {api_error_reason(error)}") from None

    def list(self, plural: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        try:
            listing = self.call(
                f"listing {plural}",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                label_selector=label_selector,
            )
        except ApiException as error:
            raise BackendError(f"listing {plural}: {api_error_reason(error)}") from None
        return listing.get("items", [])

    def create(self, plural: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create, or return the object that already has this name (a retry, a concurrent worker)."""
        if self.validate_manifests:
            validate_manifest(manifest)
        doing = f"creating {manifest['kind']} {manifest['metadata']['name']!r}"
        try:
            return self.call(
                doing,
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                manifest,
                field_validation="Strict",
            )
        except ApiException as error:
            if error.status == 409:
                existing = self.get(plural, manifest["metadata"]["name"])
                if existing is not None:
                    return existing
            raise BackendError(f"{doing}: {api_error_reason(error)}") from None

    def delete(self, plural: str, name: str, resource_version: str | None = None) -> bool:
        """Delete; False if it was gone. With ``resource_version``, only that version of it: a newer one is
        :class:`ClusterBusyError` (changed since it was checked)."""
        preconditions = client.V1Preconditions(resource_version=resource_version) if resource_version else None
        try:
            self.call(
                f"deleting {plural} {name!r}",
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background", preconditions=preconditions),
            )
        except ApiException as error:
            if error.status == 404:
                return False
            if error.status == 409 and resource_version:
                raise ClusterBusyError(
                    f"{plural} {name!r} changed since it was checked: {api_error_reason(error)}"
                ) from None
            raise BackendError(f"deleting {plural} {name!r}: {api_error_reason(error)}") from None
        return True

    def update_annotations(
        self, plural: str, name: str, doing: str, change: Callable[[dict[str, str]], None]
    ) -> dict[str, Any]:
        """Apply ``change`` to the object's annotations, optimistically: the write carries the
        ``resourceVersion`` read, and a concurrent write makes it read and try again (``on_conflict``)."""

        def read_change_write() -> dict[str, Any]:
            obj = self.get(plural, name)
            if obj is None:
                raise ClusterNotFoundError(f"no {KINDS.get(plural, plural)} {name!r} in namespace {self.namespace!r}")
            change(obj["metadata"].setdefault("annotations", {}))
            try:
                return self.call(
                    doing,
                    self.custom.replace_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    plural,
                    name,
                    obj,
                )
            except ApiException as error:
                if error.status == 404:
                    raise ClusterNotFoundError(f"{doing}: it was deleted meanwhile") from None
                if error.status == 409:
                    raise ConcurrentChange(
                        f"{doing}: it kept changing ({MAX_CONFLICTS} concurrent writes in a row)"
                    ) from None
                raise BackendError(f"{doing}: {api_error_reason(error)}") from None

        return on_conflict()(read_change_write)

    # ------------------------------------------------------------------ pods, Secrets
    def pods(self, selector: str) -> list[dict[str, Any]]:
        try:
            response = self.call(
                "listing pods",
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
                _preload_content=False,  # the JSON as sent: only status is read, no model round trip
            )
        except ApiException as error:
            raise BackendError(f"listing pods ({selector}): {api_error_reason(error)}") from None
        return json.loads(response.data)["items"]

    def pod_log(self, pod: str, container: str, doing: str, *, follow: bool = False) -> Any | None:
        """The streaming response of a container's log (None: not started yet, or gone); ``follow``: kept
        open, receiving what the container writes until it exits."""
        try:
            return self.call(
                doing,
                self.core.read_namespaced_pod_log,
                pod,
                self.namespace,
                container=container,
                follow=follow,
                _preload_content=False,  # the bytes as written, read as they come
            )
        except ApiException as error:
            if error.status in (400, 404):
                return None
            raise BackendError(f"{doing}: {api_error_reason(error)}") from None

    def service_account_token(self, account: str, audiences: Sequence[str], seconds: int) -> tuple[str, datetime]:
        """A new token of service account ``account`` (TokenRequest): valid ``seconds``, for ``audiences``
        (empty: the API server's own); (the token, when it expires)."""
        doing = f"requesting a token of service account {account!r} in namespace {self.namespace!r}"
        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=list(audiences), expiration_seconds=seconds)
        )
        try:
            issued = self.call(doing, self.core.create_namespaced_service_account_token, account, self.namespace, body)
        except ApiException as error:
            raise BackendError(f"{doing}: {api_error_reason(error)}") from None
        return issued.status.token, issued.status.expiration_timestamp

    def secret_data(self, name: str, doing: str) -> dict[str, str] | None:
        """A Secret's (base64) data; None if there is no such Secret."""
        try:
            secret = self.call(doing, self.core.read_namespaced_secret, name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise BackendError(f"{doing}: {api_error_reason(error)}") from None
        return secret.data or {}

    # ------------------------------------------------------------------ watching (async)
    async def await_change(
        self, plural: str, name: str, timeout: float, read: Callable[[dict[str, Any]], T], settled: Callable[[T], bool]
    ) -> T | None:
        """One list then one watch of a single object (``kubernetes_asyncio``): returns ``read(object)``
        once its state changes, at once when ``settled``, the latest after ``timeout``; None if gone.
        (The waits for jobs share one watch of the whole namespace instead: :mod:`.watch`.)"""
        from kubernetes_asyncio import client as async_client
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException as AsyncApiException

        namespace = await self.async_namespace()
        selector = f"metadata.name={name}"
        try:
            async with self.async_hook.get_conn() as api_client:
                custom = async_client.CustomObjectsApi(api_client)
                listing = await custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, field_selector=selector
                )
                if not listing["items"]:
                    return None
                current = read(listing["items"][0])
                if settled(current) or timeout <= 0:
                    return current
                async with watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, round(timeout)),
                ) as events:
                    async for event in events:
                        if event["type"] == "DELETED":
                            return None
                        latest = read(event["raw_object"])
                        if getattr(latest, "state", None) != getattr(current, "state", None):
                            return latest
                        current = latest
                return current
        except AsyncApiException as error:
            raise BackendError(f"watching {plural} {name!r}: {error.reason} ({error.status})") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BackendError(f"watching {plural} {name!r}: Kubernetes API unreachable: {error!r}") from None
