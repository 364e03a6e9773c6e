"""A Ray cluster that exists outside the platform, reached through its dashboard (Jobs API).

For pipelines that already have a Ray cluster: the ``ray`` connection's host and port name its
dashboard and its password holds the cluster's token. Jobs work as on any backend; the cluster's
lifecycle is someone else's, so creating or deleting clusters is refused with a clear error, and leases
(which only guard deletes) are not recorded. The token travels in a header, so a dashboard beyond this
machine must be reached over https (``allow_http`` says otherwise, explicitly); certificates are
verified (``verify``: False, or a CA bundle's path). Refused credentials fail at once, never read as a
cluster still starting.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from airflow_ray_platform.backends.base import (
    RAY_CLIENT_PORT,
    BackendAuthenticationError,
    BackendError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    DeleteCondition,
    JobInfo,
    Lease,
    RayConnection,
)
from airflow_ray_platform.backends.jobs_api import JobsApiClient, require_https
from airflow_ray_platform.spec.models import ClusterSpec, JobConfiguration, JobSpec
from airflow_ray_platform.spec.naming import dashboard_job_url


class DashboardBackend:
    """Exactly one existing cluster, named ``cluster_name``, at ``address``."""

    name = "dashboard"

    def __init__(
        self,
        address: str,
        cluster_name: str = "default",
        token: str | None = None,
        verify: bool | str = True,
        allow_http: bool = False,
    ) -> None:
        require_https(address, allow_http, "the ray connection's dashboard")
        self.address = address.rstrip("/")
        self.cluster_name = cluster_name
        self._token = token
        self._verify = verify
        self._client: JobsApiClient | None = None
        self._started_at: datetime | None = None

    def _jobs(self, cluster_name: str) -> JobsApiClient:
        if cluster_name != self.cluster_name:
            raise ClusterNotFoundError(
                f"this connection reaches only the Ray cluster {self.cluster_name!r} at {self.address}, "
                f"not {cluster_name!r}"
            )
        if self._client is None:
            self._client = JobsApiClient(cluster_name, self.address, self._token, self._verify)
        return self._client

    def validate_configuration(self, config: JobConfiguration) -> None:
        """Only jobs run here: a configuration that creates a cluster is refused at creation, by name."""

    def create_or_get_cluster(
        self, name: str, spec: ClusterSpec, labels: Mapping[str, str], lease: Lease | None = None
    ) -> ClusterInfo:
        if name == self.cluster_name and spec.reuses_existing:
            return self._info()
        raise BackendError(
            f"the dashboard backend cannot create clusters: it reaches the existing cluster "
            f"{self.cluster_name!r} at {self.address}; use the local or kuberay backend to create {name!r}"
        )

    def _info(self) -> ClusterInfo:
        """The cluster, created when its head node started (asked once): what its records and persisted
        logs are keyed by, so that a cluster restarted at the same address is a new one."""
        try:
            jobs = self._jobs(self.cluster_name)
            jobs.list()
            if self._started_at is None:
                self._started_at = jobs.head_started_at()
            state, message = ClusterState.READY, None
        except BackendAuthenticationError as error:
            state, message = ClusterState.FAILED, str(error)  # a wrong token stays wrong: fail now
        except BackendError as error:
            state, message = ClusterState.PROVISIONING, str(error)
        return ClusterInfo(
            self.cluster_name, self.name, state, self.address, message=message, created_at=self._started_at
        )

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        return self._info() if name == self.cluster_name else None

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        return [] if labels else [self._info()]

    def acquire_lease(self, name: str, lease: Lease) -> ClusterInfo:
        self._jobs(name)  # any other name: ClusterNotFoundError, saying which cluster this connection reaches
        return self._info()

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        return self.describe_cluster(name)

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:
        raise BackendError(f"the dashboard backend does not delete clusters ({name!r} is managed elsewhere)")

    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        return self._jobs(cluster_name).submit(submission_id, job, metadata)

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        return self._jobs(cluster_name).describe(submission_id)

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        return self._jobs(cluster_name).list()

    def job_logs(self, cluster_name: str, submission_id: str) -> str:
        return self._jobs(cluster_name).logs(submission_id)

    def job_log_since(
        self, cluster_name: str, submission_id: str, offset: int, *, complete_lines: bool = True
    ) -> tuple[str, int]:
        """The driver log after byte ``offset``: one follow of Ray's log tail serves every reader in this
        process, each byte fetched once (:class:`~airflow_ray_platform.backends.followed_logs.FollowedLog`)."""
        return self._jobs(cluster_name).log_since(submission_id, offset, complete_lines=complete_lines)

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        return self._jobs(cluster_name).log_chunks(submission_id)

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        return self._jobs(cluster_name).stop(submission_id)

    def metrics_urls(self, cluster_name: str) -> list[str]:
        """None known: a cluster managed elsewhere publishes its metrics where its owner chose."""
        return []

    def connection(self, cluster_name: str, *, valid_for: timedelta | None = None) -> RayConnection:
        """Ray Client's port on the dashboard's host, with the connection's token (it does not expire)."""
        self._jobs(cluster_name)  # only the one cluster
        return RayConnection(f"ray://{urlsplit(self.address).hostname}:{RAY_CLIENT_PORT}", self.address, self._token)

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        return dashboard_job_url(self.address, submission_id)
