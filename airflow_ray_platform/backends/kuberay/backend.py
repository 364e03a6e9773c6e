"""The ``kuberay`` backend: Ray clusters as KubeRay ``RayCluster`` objects, Ray jobs as ``RayJob`` objects.

Kubernetes credentials come from the cncf-kubernetes provider's :class:`KubernetesHook` (its
connection: in-cluster, kubeconfig, context, namespace); nothing here loads credentials another way.
The provider never installs KubeRay or its CRDs: if they are missing, the first call fails with a
message that says so.

Everything goes through the Kubernetes API, so an Airflow worker that cannot reach the Ray head
service still creates, waits, reads logs (from the RayJob's submitter pod, a running job's log followed
once for every reader in the process: ``logs``) and stops. Job waits in one event loop share one watch
of the namespace's RayJobs (``watch``). Where the
dashboard is reachable (``dashboard_url_template``), logs come from the Jobs API instead, authenticated
by the connection's own Kubernetes credentials (``ray_auth: kubernetes``, the default: Ray checks them
with Kubernetes RBAC, so no cluster's token is ever read) or, on older KubeRay and Ray, by the token
KubeRay keeps in the cluster's Secret (``ray_auth: secret``); a token is never logged.

Choices:

* A job is a RayJob named by its deterministic ``submission_id`` on a cluster selected through
  ``clusterSelector``; a retry reattaches by that name, a concurrent duplicate gets 409 and reads
  the existing one. A task's ephemeral cluster is a RayCluster of its own (labelled ephemeral)
  that the operator deletes after the job, and that the cleanup DAG finds by its labels if the
  task dies first.
* Stopping a job deletes its RayJob (KubeRay's finalizer stops the Ray job); suspending is not
  allowed for RayJobs on a selected cluster.
* Each submission first moves the cluster's ``last-active-at`` annotation (a write, so a new
  ``resourceVersion``); a compare-and-delete (garbage collection, a shared cluster's teardown)
  deletes with a ``resourceVersion`` precondition, so a job submitted or a lease taken between its
  check and its delete keeps the cluster. Leases and the spec a cluster was created from are
  annotations of the RayCluster, written with the same optimistic concurrency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Collection, Iterator, Mapping
from functools import cached_property
from typing import Any, TypeVar

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from airflow_ray_platform.backends.base import (
    LOG_CHUNK_BYTES,
    BackendError,
    ClusterBusyError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    DeleteCondition,
    JobInfo,
    Lease,
    check_same_spec,
    leases_from_mapping,
    leases_to_mapping,
    with_lease,
)
from airflow_ray_platform.backends.jobs_api import JobsApiClient
from airflow_ray_platform.backends.kuberay.logs import FollowedLogs
from airflow_ray_platform.backends.kuberay.manifests import (
    GROUP,
    VERSION,
    render_ray_cluster,
    render_ray_job,
    validate_configuration_manifests,
)
from airflow_ray_platform.backends.kuberay.schema import validate_manifest
from airflow_ray_platform.backends.kuberay.status import cluster_info, job_info
from airflow_ray_platform.backends.kuberay.watch import RayJobWatch
from airflow_ray_platform.backends.retries import MAX_CONFLICTS, ConcurrentChange, on_conflict
from airflow_ray_platform.spec.models import ClusterSpec, JobConfiguration, JobConfigurationError, JobSpec
from airflow_ray_platform.spec.naming import (
    CLUSTER_LABEL,
    CLUSTER_SPEC_ANNOTATION,
    LAST_ACTIVE_ANNOTATION,
    LEASES_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    dashboard_job_url,
    job_annotations,
    job_labels,
)
from airflow_ray_platform.spec.timestamps import to_text

#: How a token-auth cluster authenticates the Jobs API's callers (``KubeRayBackend``'s ``ray_auth``).
RAY_AUTH_MODES = ("kubernetes", "secret")
#: The first Ray whose head checks Kubernetes tokens (``RAY_ENABLE_K8S_TOKEN_AUTH``).
MIN_KUBERNETES_TOKEN_AUTH_RAY = (2, 55)
#: Label the Kubernetes Job controller puts on its pods: finds a RayJob's submitter pod.
SUBMITTER_POD_LABEL = "job-name"
SUBMITTER_CONTAINER = "ray-job-submitter"
T = TypeVar("T")


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


class KubeRayBackend:
    """RayClusters and RayJobs in one namespace, through a Kubernetes connection.

    :param kubernetes_conn_id: the cncf-kubernetes provider's connection.
    :param namespace: where the objects live; defaults to the connection's namespace, then ``default``.
    :param dashboard_url_template: where the Ray dashboard of cluster ``{name}`` in ``{namespace}`` is
        reachable from Airflow (e.g. ``http://{name}-head-svc.{namespace}.svc.cluster.local:8265``);
        unset, jobs are watched and their logs read through the Kubernetes API only.
    :param validate_manifests: check each manifest against the vendored CRD schema before sending it
        (the API server is also asked for strict field validation).
    :param ray_auth: how a token-auth cluster authenticates callers: ``kubernetes`` (KubeRay ≥ 1.7's
        ``authOptions.enableK8sTokenAuth``, Ray ≥ 2.55: by their Kubernetes credentials, which need the
        custom verb ``ray:write`` on the RayCluster) or ``secret`` (a static token in a Secret KubeRay
        makes, which the Jobs API calls read: ``secrets: get``).
    :param token_secret_key: with ``ray_auth: secret``, the token's key in that Secret.
    """

    name = "kuberay"

    def __init__(
        self,
        kubernetes_conn_id: str = "kubernetes_default",
        namespace: str | None = None,
        dashboard_url_template: str | None = None,
        validate_manifests: bool = True,
        ray_auth: str = "kubernetes",
        token_secret_key: str = "auth_token",
    ) -> None:
        if ray_auth not in RAY_AUTH_MODES:
            raise BackendError(
                f"kuberay backend option 'ray_auth' must be one of {list(RAY_AUTH_MODES)}, not {ray_auth!r}"
            )
        self.kubernetes_conn_id = kubernetes_conn_id
        self.ray_auth = ray_auth
        self._namespace = namespace
        self.dashboard_url_template = dashboard_url_template
        self.validate_manifests = validate_manifests
        self.token_secret_key = token_secret_key
        #: Per cluster: (the token it was made with, the Jobs API client).
        self._jobs_api: dict[str, tuple[str | None, JobsApiClient]] = {}
        self._cluster_auths: dict[str, str] = {}

    # ------------------------------------------------------------ plumbing
    @cached_property
    def kubernetes_hook(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def namespace(self) -> str:
        return self._namespace or self.kubernetes_hook.get_namespace() or "default"

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.kubernetes_hook.api_client)

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.kubernetes_hook.api_client)

    def _call(self, doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(
                f"reading {plural} {name!r}",
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                name,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise BackendError(f"reading {plural} {name!r}: {api_error_reason(error)}") from None

    def _list(self, plural: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        try:
            listing = self._call(
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

    def _create(self, plural: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create, or return the object that already has this name (a retry, a concurrent worker)."""
        if self.validate_manifests:
            validate_manifest(manifest)
        name = manifest["metadata"]["name"]
        try:
            return self._call(
                f"creating {manifest['kind']} {name!r}",
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
                existing = self._get(plural, name)
                if existing is not None:
                    return existing
            raise BackendError(f"creating {manifest['kind']} {name!r}: {api_error_reason(error)}") from None

    def _delete(self, plural: str, name: str, resource_version: str | None = None) -> bool:
        preconditions = client.V1Preconditions(resource_version=resource_version) if resource_version else None
        try:
            self._call(
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

    def _dashboard_url(self, name: str) -> str | None:
        if not self.dashboard_url_template:
            return None
        return self.dashboard_url_template.format(name=name, namespace=self.namespace).rstrip("/")

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        try:
            response = self._call(
                "listing pods",
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
                _preload_content=False,  # the JSON as sent: only status is read, no model round trip
            )
        except ApiException as error:
            raise BackendError(f"listing pods ({selector}): {api_error_reason(error)}") from None
        return json.loads(response.data)["items"]

    # ----------------------------------------------------------------- clusters
    def validate_configuration(self, config: JobConfiguration) -> None:
        """Render what ``config`` creates here and check it strictly against KubeRay's CRDs; with
        ``ray_auth: kubernetes``, a token-auth cluster needs a Ray that checks Kubernetes tokens."""
        cluster = config.cluster
        version = tuple(int(part) for part in (cluster.ray_version or "999").split("."))
        if self.ray_auth == "kubernetes" and cluster.auth == "token" and version < MIN_KUBERNETES_TOKEN_AUTH_RAY:
            raise JobConfigurationError(
                f"cluster.ray_version: {cluster.ray_version} cannot check Kubernetes tokens (needs Ray >= 2.55, "
                "for this connection's ray_auth 'kubernetes'); use a newer ray_version, or a connection with "
                "ray_auth 'secret'"
            )
        if self.validate_manifests:
            validate_configuration_manifests(config)

    def _cluster_info(self, obj: dict[str, Any], *, with_pods: bool = True) -> ClusterInfo:
        info = cluster_info(obj, self.name, self._dashboard_url(obj["metadata"]["name"]))
        if with_pods and info.state == ClusterState.PROVISIONING:
            # Only while not ready: the pods say why (unschedulable, image pull) where KubeRay does not.
            pods = self._pods(f"ray.io/cluster={obj['metadata']['name']}")
            info = cluster_info(obj, self.name, info.dashboard_url, pods)
        return info

    def create_or_get_cluster(
        self, name: str, spec: ClusterSpec, labels: Mapping[str, str], lease: Lease | None = None
    ) -> ClusterInfo:
        annotations = {
            LAST_ACTIVE_ANNOTATION: to_text(),
            CLUSTER_SPEC_ANNOTATION: json.dumps(spec.recorded(), sort_keys=True),
            LEASES_ANNOTATION: json.dumps(leases_to_mapping([lease] if lease is not None else [])),
        }
        manifest = render_ray_cluster(
            name, self.namespace, spec, labels, annotations, kubernetes_token_auth=self.ray_auth == "kubernetes"
        )

        def create_and_lease() -> ClusterInfo:
            obj = self._create("rayclusters", manifest)
            info = cluster_info(obj, self.name, None)
            check_same_spec(name, info.spec, spec)
            if lease is None or any(held.key == lease.key for held in info.leases):
                return self._cluster_info(obj)
            try:
                return self.acquire_lease(name, lease)
            except ClusterNotFoundError:  # deleted since it was read: create it again
                raise ConcurrentChange(f"RayCluster {name!r} kept being deleted while it was being leased") from None

        return on_conflict()(create_and_lease)

    def acquire_lease(self, name: str, lease: Lease) -> ClusterInfo:
        def take(annotations: dict[str, str]) -> None:
            held = leases_from_mapping(json.loads(annotations.get(LEASES_ANNOTATION) or "{}"))
            annotations[LEASES_ANNOTATION] = json.dumps(leases_to_mapping(with_lease(held, lease)))
            annotations[LAST_ACTIVE_ANNOTATION] = to_text()

        return self._cluster_info(self._update_annotations(name, f"leasing RayCluster {name!r}", take))

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        def release(annotations: dict[str, str]) -> None:
            held = leases_from_mapping(json.loads(annotations.get(LEASES_ANNOTATION) or "{}"))
            annotations[LEASES_ANNOTATION] = json.dumps(
                leases_to_mapping([lease for lease in held if lease.key not in set(keys)])
            )

        try:
            obj = self._update_annotations(name, f"releasing leases of RayCluster {name!r}", release)
        except ClusterNotFoundError:
            return None
        return self._cluster_info(obj)

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        obj = self._get("rayclusters", name)
        return None if obj is None else self._cluster_info(obj)

    def jobs_by_cluster(self) -> dict[str, list[JobInfo]]:
        """Every RayJob of the namespace (one list call), by the cluster it runs on; not only this
        provider's: a job someone else submitted to a managed cluster keeps that cluster busy too."""
        grouped: dict[str, list[JobInfo]] = {}
        for obj in self._list("rayjobs", {}):
            info = job_info(obj)
            grouped.setdefault(info.cluster_name, []).append(info)
        return grouped

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        return [self._cluster_info(obj, with_pods=False) for obj in self._list("rayclusters", labels or {})]

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:

        def check_and_delete() -> bool | None:
            obj = self._get("rayclusters", name)
            if obj is None:
                return None
            if condition is None:
                return self._delete("rayclusters", name)
            info = cluster_info(obj, self.name, None)
            jobs = self.jobs_by_cluster().get(name, [])
            condition.check(
                name, info.last_active_at, info.leases, [j.submission_id for j in jobs if not j.state.is_terminal]
            )
            try:
                return self._delete("rayclusters", name, obj["metadata"]["resourceVersion"])
            except ClusterBusyError:  # written meanwhile (KubeRay's status, a lease, a job): check the new version
                raise ConcurrentChange(f"RayCluster {name!r} kept changing while being checked for deletion") from None

        try:
            deleted = on_conflict()(check_and_delete)
        except ConcurrentChange as error:
            raise ClusterBusyError(str(error)) from None
        if deleted is None:
            return False
        # This provider's RayJobs of the cluster go with it: their records live on in the state store.
        for job in self._list("rayjobs", {CLUSTER_LABEL: name}):
            self._delete("rayjobs", job["metadata"]["name"])
        for cache in (self._jobs_api, self._cluster_auths):
            cache.pop(name, None)
        return deleted

    # --------------------------------------------------------------------- jobs
    def _update_annotations(
        self, cluster_name: str, doing: str, change: Callable[[dict[str, str]], None]
    ) -> dict[str, Any]:
        """Apply ``change`` to the RayCluster's annotations (optimistically: the write carries the
        ``resourceVersion`` read, and is retried on a concurrent write)."""

        def read_change_write() -> dict[str, Any]:
            obj = self._get("rayclusters", cluster_name)
            if obj is None:
                raise ClusterNotFoundError(f"no RayCluster {cluster_name!r} in namespace {self.namespace!r}")
            change(obj["metadata"].setdefault("annotations", {}))
            try:
                return self._call(
                    doing,
                    self.custom.replace_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "rayclusters",
                    cluster_name,
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

    def _touch(self, cluster_name: str) -> dict[str, Any]:
        """Move the cluster's activity mark forward."""

        def mark(annotations: dict[str, str]) -> None:
            annotations[LAST_ACTIVE_ANNOTATION] = to_text()

        return self._update_annotations(cluster_name, f"marking RayCluster {cluster_name!r} active", mark)

    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        existing = self._get("rayjobs", submission_id)
        if existing is not None:
            return job_info(existing)
        self._touch(cluster_name)
        labels = {**job_labels(metadata), MANAGED_BY_LABEL: MANAGED_BY_VALUE, CLUSTER_LABEL: cluster_name}
        manifest = render_ray_job(
            submission_id, self.namespace, job, metadata, labels, job_annotations(metadata), cluster_name=cluster_name
        )
        return job_info(self._create("rayjobs", manifest))

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        obj = self._get("rayjobs", submission_id)
        if obj is None or (obj["metadata"].get("labels") or {}).get(CLUSTER_LABEL) != cluster_name:
            return None
        return job_info(obj)

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        return [job_info(obj) for obj in self._list("rayjobs", {CLUSTER_LABEL: cluster_name})]

    def _cluster_auth(self, cluster_name: str) -> str:
        """How the cluster authenticates callers: ``kubernetes``, ``secret`` or ``disabled`` (from its
        ``authOptions``, read once: a cluster's are fixed at its creation)."""
        if cluster_name not in self._cluster_auths:
            obj = self._get("rayclusters", cluster_name)
            if obj is None:
                raise ClusterNotFoundError(f"no RayCluster {cluster_name!r} in namespace {self.namespace!r}")
            options = (obj.get("spec") or {}).get("authOptions") or {}
            self._cluster_auths[cluster_name] = (
                "disabled"
                if options.get("mode") != "token"
                else "kubernetes"
                if options.get("enableK8sTokenAuth")
                else "secret"
            )
        return self._cluster_auths[cluster_name]

    def _kubernetes_bearer_token(self, cluster_name: str) -> str:
        """The connection's own Kubernetes bearer token (refreshed by the client once it expires)."""
        configuration = self.kubernetes_hook.api_client.configuration
        bearer = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
        if not bearer:
            raise BackendError(
                f"reading the Jobs API of {cluster_name!r}, which authenticates by Kubernetes credentials: "
                f"Kubernetes connection {self.kubernetes_conn_id!r} has no bearer token (a client certificate "
                "cannot authenticate to Ray); use a token-based identity"
            )
        return bearer.removeprefix("Bearer ").strip()

    def _secret_token(self, cluster_name: str) -> str | None:
        """The cluster's Ray token from the Secret KubeRay made (clusters created with ``ray_auth: secret``)."""
        try:
            secret = self._call(
                f"reading the token Secret of {cluster_name!r}",
                self.core.read_namespaced_secret,
                cluster_name,
                self.namespace,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise BackendError(f"reading the token Secret of {cluster_name!r}: {api_error_reason(error)}") from None
        encoded = (secret.data or {}).get(self.token_secret_key)
        return base64.b64decode(encoded).decode() if encoded else None

    def _jobs_api_client(self, cluster_name: str) -> JobsApiClient | None:
        """The cluster's Jobs API client, with what authenticates to it: the connection's Kubernetes token
        (a new client whenever it was refreshed), a Secret's token (read once), or nothing at all for a
        cluster without auth (no credential is ever sent where none is checked)."""
        url = self._dashboard_url(cluster_name)
        if url is None:
            return None
        auth = self._cluster_auth(cluster_name)
        cached = self._jobs_api.get(cluster_name)
        if auth == "kubernetes":
            token = self._kubernetes_bearer_token(cluster_name)
        elif cached is not None:
            return cached[1]
        else:
            token = self._secret_token(cluster_name) if auth == "secret" else None
        if cached is None or cached[0] != token:
            cached = self._jobs_api[cluster_name] = (token, JobsApiClient(cluster_name, url, token))
        return cached[1]

    def _submitter_pods(self, submission_id: str) -> Iterator[dict[str, Any]]:
        pods = self._pods(f"{SUBMITTER_POD_LABEL}={submission_id}")
        yield from sorted(pods, key=lambda pod: pod["metadata"].get("creationTimestamp") or "", reverse=True)

    def _submitter_log(self, submission_id: str, *, follow: bool = False) -> Any | None:
        """The streaming response of the newest submitter pod's log (None: no pod, or not started);
        ``follow``: kept open, receiving what the container writes until it exits."""
        for pod in self._submitter_pods(submission_id):
            try:
                return self._call(
                    f"reading the submitter log of {submission_id!r}",
                    self.core.read_namespaced_pod_log,
                    pod["metadata"]["name"],
                    self.namespace,
                    container=SUBMITTER_CONTAINER,
                    follow=follow,
                    _preload_content=False,  # the bytes as written, read as they come
                )
            except ApiException as error:
                if error.status in (400, 404):  # not started yet, or gone: no log to read
                    return None
                raise BackendError(f"reading the log of {submission_id!r}: {api_error_reason(error)}") from None
        return None

    def job_logs(self, cluster_name: str, submission_id: str) -> str:
        """The driver log: from the Jobs API where reachable, else from the RayJob's submitter pod."""
        jobs_api = self._jobs_api_client(cluster_name)
        if jobs_api is not None:
            return jobs_api.logs(submission_id)
        response = self._submitter_log(submission_id)
        return "" if response is None else response.data.decode(errors="replace")

    def job_log_since(
        self, cluster_name: str, submission_id: str, offset: int, *, complete_lines: bool = True
    ) -> tuple[str, int]:
        """The driver log after byte ``offset``: from the submitter pod's log, followed once for every
        reader in this process (:class:`FollowedLog`); from the Jobs API where reachable, sliced."""
        jobs_api = self._jobs_api_client(cluster_name)
        if jobs_api is not None:
            data = jobs_api.logs(submission_id).encode()[offset:]
            if complete_lines:
                data = data[: data.rfind(b"\n") + 1]
            return data.decode(errors="replace"), offset + len(data)
        followed = FollowedLogs.get(
            (self.kubernetes_conn_id, self.namespace, submission_id),
            lambda: self._submitter_log(submission_id, follow=True),
        )
        return followed.since(offset, complete_lines=complete_lines)

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        jobs_api = self._jobs_api_client(cluster_name)
        if jobs_api is not None:
            yield from jobs_api.log_chunks(submission_id)
            return
        response = self._submitter_log(submission_id)
        if response is not None:
            try:
                yield from response.stream(LOG_CHUNK_BYTES, decode_content=True)
            finally:
                response.release_conn()

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        """Delete the RayJob (KubeRay then stops the Ray job); False when it had already ended."""
        info = self.describe_job(cluster_name, submission_id)
        if info is None or info.state.is_terminal:
            return False
        return self._delete("rayjobs", submission_id)

    def metrics_urls(self, cluster_name: str) -> list[str]:
        """None: pods' metrics ports are inside the cluster network; Prometheus there scrapes them."""
        return []

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        url = self._dashboard_url(cluster_name)
        return None if url is None else dashboard_job_url(url, submission_id)

    # ------------------------------------------------------- watching (async)
    @cached_property
    def async_kubernetes_hook(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        return AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)

    async def _await_change(
        self, plural: str, name: str, timeout: float, read: Callable[[dict[str, Any]], T], settled: Callable[[T], bool]
    ) -> T | None:
        """One list then one watch of a single object (``kubernetes_asyncio``): returns ``read(object)``
        once its state changes, at once when ``settled``, the latest after ``timeout``; None if gone."""
        from kubernetes_asyncio import client as async_client
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException as AsyncApiException

        namespace = await self._async_namespace()
        selector = f"metadata.name={name}"
        try:
            async with self.async_kubernetes_hook.get_conn() as api_client:
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

    async def _async_namespace(self) -> str:
        return self._namespace or await asyncio.to_thread(lambda: self.namespace)  # may read the connection

    async def await_job(self, cluster_name: str, submission_id: str, timeout: float) -> JobInfo | None:
        """The RayJob's state through the watch of its namespace that every wait of this event loop shares
        (:class:`RayJobWatch`): what the deferrable trigger waits on."""

        def read(obj: dict[str, Any]) -> JobInfo | None:
            return job_info(obj) if (obj["metadata"].get("labels") or {}).get(CLUSTER_LABEL) == cluster_name else None

        shared = RayJobWatch.shared(
            self.kubernetes_conn_id, await self._async_namespace(), self.async_kubernetes_hook.get_conn
        )
        return await shared.await_change(submission_id, timeout, read, lambda job: job is None or job.state.is_terminal)

    async def await_cluster(self, name: str, timeout: float) -> ClusterInfo | None:
        """The RayCluster's state through a watch (the pods' reasons come from ``describe_cluster``)."""
        return await self._await_change(
            "rayclusters",
            name,
            timeout,
            lambda obj: cluster_info(obj, self.name, self._dashboard_url(name)),
            lambda info: info.state != ClusterState.PROVISIONING,
        )
