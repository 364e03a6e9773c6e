"""The ``kuberay`` backend: Ray clusters as KubeRay ``RayCluster`` objects, Ray jobs as ``RayJob`` objects.

The Kubernetes API is reached through :mod:`.client` (the cncf-kubernetes provider's hooks, one namespace);
the provider never installs KubeRay or its CRDs, and the first call fails saying so if they are missing.

Everything goes through the Kubernetes API, so an Airflow worker that cannot reach the Ray head
service still creates, waits, reads logs (from the RayJob's submitter pod, a running job's log followed
once for every reader in the process: :mod:`..followed_logs`) and stops. Job waits in one event loop share one
watch of the namespace's RayJobs (:mod:`.watch`). Where the dashboard is reachable
(``dashboard_url_template``), logs come from the Jobs API instead, authenticated as :mod:`.auth` says.

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

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow_ray_platform.backends.base import (
    LOG_CHUNK_BYTES,
    RAY_CLIENT_PORT,
    BackendError,
    ClusterBusyError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    DeleteCondition,
    JobInfo,
    Lease,
    RayConnection,
    check_same_spec,
    leases_from_mapping,
    leases_to_mapping,
    with_lease,
)
from airflow_ray_platform.backends.followed_logs import FINAL_READ_SECONDS, FollowedLogs
from airflow_ray_platform.backends.jobs_api import JobsApiClient, require_https
from airflow_ray_platform.backends.kuberay.auth import MIN_KUBERNETES_TOKEN_AUTH_RAY, RAY_AUTH_MODES, JobsApiAuth
from airflow_ray_platform.backends.kuberay.client import KubeRayClient
from airflow_ray_platform.backends.kuberay.manifests import (
    render_ray_cluster,
    render_ray_job,
    validate_configuration_manifests,
)
from airflow_ray_platform.backends.kuberay.status import cluster_info, job_info
from airflow_ray_platform.backends.kuberay.watch import RayJobWatch
from airflow_ray_platform.backends.retries import ConcurrentChange, on_conflict
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

#: Label the Kubernetes Job controller puts on its pods: finds a RayJob's submitter pod.
SUBMITTER_POD_LABEL = "job-name"
SUBMITTER_CONTAINER = "ray-job-submitter"


def _chunks(response: Any | None) -> Iterator[bytes] | None:
    """A streaming pod log response's chunks, its connection released at their end (None: no pod yet)."""
    if response is None:
        return None

    def chunks() -> Iterator[bytes]:
        try:
            yield from response.stream(LOG_CHUNK_BYTES, decode_content=True)
        finally:
            response.release_conn()

    return chunks()


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
    :param verify: how the dashboards' certificates are checked: True (the system's CAs), a CA bundle's
        path (a cluster-internal CA), or False.
    :param allow_http: accept a ``dashboard_url_template`` that is not https (the Jobs API credential then
        crosses the network in clear text).
    :param jobs_api_service_account: with ``dashboard_url_template`` and ``ray_auth: kubernetes``, the
        service account (in the clusters' namespace) whose short-lived tokens (TokenRequest) authenticate
        Jobs API calls: it should hold ``ray:write`` on the RayClusters and nothing else. Never the
        connection's own token.
    :param jobs_api_audiences: the audiences those tokens are bound to (default: the API server's).
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
        verify: bool | str = True,
        allow_http: bool = False,
        jobs_api_service_account: str | None = None,
        jobs_api_audiences: Sequence[str] = (),
    ) -> None:
        if dashboard_url_template:
            example = dashboard_url_template.format(name="cluster", namespace="namespace")
            require_https(example, allow_http, "kuberay backend option 'dashboard_url_template':")
            if ray_auth == "kubernetes" and not jobs_api_service_account:
                raise BackendError(
                    "kuberay backend option 'jobs_api_service_account' is required with dashboard_url_template and "
                    "ray_auth 'kubernetes': Jobs API calls authenticate with short-lived tokens of that account "
                    "(ray:write only), never with the connection's own Kubernetes token"
                )
        if ray_auth not in RAY_AUTH_MODES:
            raise BackendError(
                f"kuberay backend option 'ray_auth' must be one of {list(RAY_AUTH_MODES)}, not {ray_auth!r}"
            )
        self.ray_auth = ray_auth
        self.dashboard_url_template = dashboard_url_template
        self.validate_manifests = validate_manifests
        self.api = KubeRayClient(kubernetes_conn_id, namespace, validate_manifests=validate_manifests)
        self.auth = JobsApiAuth(self.api, token_secret_key, verify, jobs_api_service_account, jobs_api_audiences)

    @property
    def kubernetes_conn_id(self) -> str:
        return self.api.kubernetes_conn_id

    @property
    def namespace(self) -> str:
        return self.api.namespace

    def _dashboard_url(self, name: str) -> str | None:
        if not self.dashboard_url_template:
            return None
        return self.dashboard_url_template.format(name=name, namespace=self.namespace).rstrip("/")

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
            pods = self.api.pods(f"ray.io/cluster={obj['metadata']['name']}")
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
            obj = self.api.create("rayclusters", manifest)
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

        return self._cluster_info(
            self.api.update_annotations("rayclusters", name, f"leasing RayCluster {name!r}", take)
        )

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        def release(annotations: dict[str, str]) -> None:
            held = leases_from_mapping(json.loads(annotations.get(LEASES_ANNOTATION) or "{}"))
            annotations[LEASES_ANNOTATION] = json.dumps(
                leases_to_mapping([lease for lease in held if lease.key not in set(keys)])
            )

        try:
            obj = self.api.update_annotations("rayclusters", name, f"releasing leases of RayCluster {name!r}", release)
        except ClusterNotFoundError:
            return None
        return self._cluster_info(obj)

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        obj = self.api.get("rayclusters", name)
        return None if obj is None else self._cluster_info(obj)

    def jobs_by_cluster(self) -> dict[str, list[JobInfo]]:
        """Every RayJob of the namespace (one list call), by the cluster it runs on; not only this
        provider's: a job someone else submitted to a managed cluster keeps that cluster busy too."""
        grouped: dict[str, list[JobInfo]] = {}
        for obj in self.api.list("rayjobs", {}):
            info = job_info(obj)
            grouped.setdefault(info.cluster_name, []).append(info)
        return grouped

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        return [self._cluster_info(obj, with_pods=False) for obj in self.api.list("rayclusters", labels or {})]

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:

        def check_and_delete() -> bool | None:
            obj = self.api.get("rayclusters", name)
            if obj is None:
                return None
            if condition is None:
                return self.api.delete("rayclusters", name)
            info = cluster_info(obj, self.name, None)
            jobs = self.jobs_by_cluster().get(name, [])
            condition.check(
                name, info.last_active_at, info.leases, [j.submission_id for j in jobs if not j.state.is_terminal]
            )
            try:
                return self.api.delete("rayclusters", name, obj["metadata"]["resourceVersion"])
            except ClusterBusyError:  # written meanwhile (KubeRay's status, a lease, a job): check the new version
                raise ConcurrentChange(f"RayCluster {name!r} kept changing while being checked for deletion") from None

        try:
            deleted = on_conflict()(check_and_delete)
        except ConcurrentChange as error:
            raise ClusterBusyError(str(error)) from None
        if deleted is None:
            return False
        # This provider's RayJobs of the cluster go with it: their records live on in the state store.
        for job in self.api.list("rayjobs", {CLUSTER_LABEL: name}):
            self.api.delete("rayjobs", job["metadata"]["name"])
        self.auth.forget(name)
        return deleted

    # --------------------------------------------------------------------- jobs
    def _touch(self, cluster_name: str) -> dict[str, Any]:
        """Move the cluster's activity mark forward."""

        def mark(annotations: dict[str, str]) -> None:
            annotations[LAST_ACTIVE_ANNOTATION] = to_text()

        return self.api.update_annotations(
            "rayclusters", cluster_name, f"marking RayCluster {cluster_name!r} active", mark
        )

    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        existing = self.api.get("rayjobs", submission_id)
        if existing is not None:
            return job_info(existing)
        self._touch(cluster_name)
        labels = {**job_labels(metadata), MANAGED_BY_LABEL: MANAGED_BY_VALUE, CLUSTER_LABEL: cluster_name}
        manifest = render_ray_job(
            submission_id, self.namespace, job, metadata, labels, job_annotations(metadata), cluster_name=cluster_name
        )
        return job_info(self.api.create("rayjobs", manifest))

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        obj = self.api.get("rayjobs", submission_id)
        if obj is None or (obj["metadata"].get("labels") or {}).get(CLUSTER_LABEL) != cluster_name:
            return None
        return job_info(obj)

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        return [job_info(obj) for obj in self.api.list("rayjobs", {CLUSTER_LABEL: cluster_name})]

    def _jobs_api_client(self, cluster_name: str) -> JobsApiClient | None:
        """The cluster's Jobs API client where its dashboard is reachable (``dashboard_url_template``)."""
        url = self._dashboard_url(cluster_name)
        return None if url is None else self.auth.client(cluster_name, url)

    def _submitter_pods(self, submission_id: str) -> Iterator[dict[str, Any]]:
        pods = self.api.pods(f"{SUBMITTER_POD_LABEL}={submission_id}")
        yield from sorted(pods, key=lambda pod: pod["metadata"].get("creationTimestamp") or "", reverse=True)

    def _submitter_log(self, submission_id: str, *, follow: bool = False) -> Any | None:
        """The streaming response of the newest submitter pod's log (None: no pod, or not started);
        ``follow``: kept open, receiving what the container writes until it exits."""
        for pod in self._submitter_pods(submission_id):
            doing = f"reading the submitter log of {submission_id!r}"
            return self.api.pod_log(pod["metadata"]["name"], SUBMITTER_CONTAINER, doing, follow=follow)
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
            return jobs_api.log_since(submission_id, offset, complete_lines=complete_lines)
        followed = FollowedLogs.get(
            self._followed_key(submission_id), lambda: _chunks(self._submitter_log(submission_id, follow=True))
        )
        return followed.since(offset, complete_lines=complete_lines)

    def _followed_key(self, submission_id: str) -> tuple[str, ...]:
        return ("kubernetes", self.kubernetes_conn_id, self.namespace, submission_id)

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        """A finished job's driver log: from the Jobs API where reachable, else the submitter pod's log,
        once its container has printed the last line (a followed log's end says so)."""
        jobs_api = self._jobs_api_client(cluster_name)
        if jobs_api is not None:
            yield from jobs_api.log_chunks(submission_id)
            return
        followed = FollowedLogs.find(self._followed_key(submission_id))
        if followed is not None:
            followed.wait_for_end(FINAL_READ_SECONDS)
        yield from _chunks(self._submitter_log(submission_id)) or ()

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        """Delete the RayJob (KubeRay then stops the Ray job); False when it had already ended."""
        info = self.describe_job(cluster_name, submission_id)
        if info is None or info.state.is_terminal:
            return False
        return self.api.delete("rayjobs", submission_id)

    def metrics_urls(self, cluster_name: str) -> list[str]:
        """None: pods' metrics ports are inside the cluster network; Prometheus there scrapes them."""
        return []

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        url = self._dashboard_url(cluster_name)
        return None if url is None else dashboard_job_url(url, submission_id)

    def connection(self, cluster_name: str, *, valid_for: timedelta | None = None) -> RayConnection:
        """Ray Client on the head service KubeRay made (reachable inside the Kubernetes cluster, e.g. from
        a notebook server there), with what this connection authenticates to the cluster with: with
        ``ray_auth: kubernetes``, a token of its own valid ``valid_for`` (a session's hold), else the
        connection's current one."""
        if self.describe_cluster(cluster_name) is None:
            raise ClusterNotFoundError(f"no RayCluster {cluster_name!r} in namespace {self.namespace!r}")
        address = f"ray://{cluster_name}-head-svc.{self.namespace}.svc:{RAY_CLIENT_PORT}"
        return RayConnection(address, self._dashboard_url(cluster_name), self.auth.token(cluster_name, valid_for))

    # ------------------------------------------------------- watching (async)
    async def await_job(self, cluster_name: str, submission_id: str, timeout: float) -> JobInfo | None:
        """The RayJob's state through the watch of its namespace that every wait of this event loop shares
        (:class:`RayJobWatch`): what the deferrable trigger waits on."""

        def read(obj: dict[str, Any]) -> JobInfo | None:
            return job_info(obj) if (obj["metadata"].get("labels") or {}).get(CLUSTER_LABEL) == cluster_name else None

        shared = RayJobWatch.shared(
            self.kubernetes_conn_id, await self.api.async_namespace(), self.api.async_hook.get_conn
        )
        return await shared.await_change(submission_id, timeout, read, lambda job: job is None or job.state.is_terminal)

    async def await_cluster(self, name: str, timeout: float) -> ClusterInfo | None:
        """The RayCluster's state through a watch (the pods' reasons come from ``describe_cluster``)."""
        return await self.api.await_change(
            "rayclusters",
            name,
            timeout,
            lambda obj: cluster_info(obj, self.name, self._dashboard_url(name)),
            lambda info: info.state != ClusterState.PROVISIONING,
        )
