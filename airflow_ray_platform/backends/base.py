"""The seam between what the user asked for and where clusters live.

Everything that acts on clusters and jobs (the job run behind the operators, sensor and triggers,
garbage collection) speaks only to :class:`RayBackend`; the hook's one job is to build it from a
connection. A backend owns both clusters and jobs because "a job" differs by backend: a Jobs API
submission on the local backend, a RayJob custom resource on KubeRay. Every method is synchronous and
idempotent; async callers (triggers) run them in a worker thread so the triggerer's event loop never
blocks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from airflow_ray_platform.config import ClusterSpec, JobConfiguration, JobSpec
from airflow_ray_platform.naming import OWNER_LABEL, TEAM_LABEL

#: The size of the chunks a backend streams a finished job's driver log in (never the whole log at once).
LOG_CHUNK_BYTES = 8 * 1024 * 1024


class ClusterState(enum.StrEnum):
    PROVISIONING = "PROVISIONING"
    READY = "READY"
    FAILED = "FAILED"


class JobState(enum.StrEnum):
    """Ray's ``JobStatus`` values."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)


class BackendError(RuntimeError):
    """A backend could not do what was asked; the message carries the underlying reason."""


class ClusterNotFoundError(BackendError):
    """The named cluster does not exist on this backend."""


class ClusterBusyError(BackendError):
    """A compare-and-delete found the cluster in use; it was not deleted."""


class ClusterFailedError(BackendError):
    """The cluster will not become ready (a process died, a pod is unschedulable, a deadline passed)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What a backend knows of one cluster. Never holds a credential."""

    name: str
    backend: str
    state: ClusterState
    dashboard_url: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)
    created_at: datetime | None = None
    last_active_at: datetime | None = None
    message: str | None = None

    @property
    def owner(self) -> str | None:
        return self.labels.get(OWNER_LABEL)

    @property
    def team(self) -> str | None:
        return self.labels.get(TEAM_LABEL)


@dataclass(frozen=True)
class JobInfo:
    """What a backend knows of one Ray job."""

    submission_id: str
    cluster_name: str
    state: JobState
    entrypoint: str = ""
    message: str | None = None
    error_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None


@runtime_checkable
class RayBackend(Protocol):
    """Where clusters live. ``local`` and ``kuberay`` implement it."""

    name: str

    def validate_configuration(self, config: JobConfiguration) -> None:
        """Raise (naming the field and the rule) if this backend cannot run ``config``; called before
        anything is created."""

    def create_or_get_cluster(self, name: str, spec: ClusterSpec, labels: Mapping[str, str]) -> ClusterInfo:
        """Create the cluster, or return the existing one of that name; never two."""

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        """Current state, or None when no such cluster exists."""

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        """Clusters of this backend whose labels include ``labels``."""

    def delete_cluster(self, name: str, if_inactive_since: datetime | None = None) -> bool:
        """Delete the cluster; False when it did not exist.

        With ``if_inactive_since`` (a compare-and-delete, for garbage collection) raise
        :class:`ClusterBusyError` instead if the cluster saw activity after that mark or has a
        pending or running job, checked atomically with the delete.
        """

    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        """Submit the job under ``submission_id``, or return the job that already has that id."""

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        """Current state, or None when the cluster has no job of that id."""

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        """Every job the cluster knows."""

    def job_logs(self, cluster_name: str, submission_id: str) -> str:
        """The job's driver log so far."""

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        """A finished job's whole driver log, streamed in chunks (for persisting it: never whole in memory)."""

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        """Ask the job to stop; False when it had already finished."""

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        """Where a person sees this job in the Ray dashboard, if anywhere."""

    def metrics_urls(self, cluster_name: str) -> list[str]:
        """Prometheus endpoints of the cluster's nodes reachable from here (empty when none is)."""


@runtime_checkable
class WatchingBackend(Protocol):
    """A backend that waits for a change on the server side (a Kubernetes watch) instead of being polled.

    Triggers use these coroutines when the backend has them: the wait costs a constant number of API
    calls however long the job runs, and nothing blocks the triggerer's event loop.
    """

    async def await_job(self, cluster_name: str, submission_id: str, timeout: float) -> JobInfo | None:
        """The job once its state changes (or at once if terminal, or after ``timeout`` s); None if gone."""

    async def await_cluster(self, name: str, timeout: float) -> ClusterInfo | None:
        """The cluster once its state changes (or at once if READY or FAILED, or after ``timeout`` s)."""


@runtime_checkable
class BulkJobListing(Protocol):
    """A backend that lists every cluster's jobs at once (garbage collection then costs one call)."""

    def jobs_by_cluster(self) -> dict[str, list[JobInfo]]:
        """Every job this backend knows, by the name of the cluster it runs on."""
