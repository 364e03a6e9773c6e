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
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from airflow_ray_platform.spec.models import ClusterSpec, JobConfiguration, JobSpec
from airflow_ray_platform.spec.naming import OWNER_LABEL, TEAM_LABEL, TaskIdentity
from airflow_ray_platform.spec.timestamps import parse as parse_time
from airflow_ray_platform.spec.timestamps import to_text

#: The size of the chunks a backend streams a finished job's driver log in (never the whole log at once).
LOG_CHUNK_BYTES = 8 * 1024 * 1024
#: Ray Client's port on a head node (``ray://host:10001``), Ray's default and the one KubeRay's head service opens.
RAY_CLIENT_PORT = 10001


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


class BackendAuthenticationError(BackendError):
    """The cluster refused our credentials (401/403): waiting will not change that."""


class ClusterSpecMismatchError(BackendError):
    """A cluster of that name exists with another spec; nothing was created or leased."""


@dataclass(frozen=True)
class Lease:
    """A task's claim on a shared cluster, held for its DAG run.

    While a lease's DAG run is running, neither another run's ``RayClusterDeleteOperator`` nor garbage
    collection deletes the cluster. A lease outlives its task on purpose (``RayClusterOperator``'s task
    ends long before the run's jobs do); it is released by its run's delete task, or expires with its
    run (a run that ends without releasing: killed, teardown skipped).

    An interactive session's lease has no DAG run: it holds until ``expires_at`` (or its release), so a
    notebook that crashed holds nothing for long.
    """

    holder: TaskIdentity
    acquired_at: datetime
    expires_at: datetime | None = None

    @property
    def key(self) -> str:
        return self.holder.key

    def held_by_run(self, dag_id: str, run_id: str) -> bool:
        return (self.holder.dag_id, self.holder.run_id) == (dag_id, run_id)

    def __str__(self) -> str:
        holder = self.holder
        return f"{holder.dag_id} run {holder.run_id} (task {holder.task_id}, since {to_text(self.acquired_at)})"

    def to_dict(self) -> dict[str, Any]:
        holder = self.holder
        data = {
            "dag_id": holder.dag_id,
            "task_id": holder.task_id,
            "run_id": holder.run_id,
            "map_index": holder.map_index,
            "acquired_at": to_text(self.acquired_at),
        }
        if self.expires_at is not None:
            data["expires_at"] = to_text(self.expires_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lease:
        holder = TaskIdentity(data["dag_id"], data["task_id"], data["run_id"], int(data.get("map_index", -1)))
        acquired = parse_time(data["acquired_at"])
        assert acquired is not None
        return cls(holder, acquired, parse_time(data.get("expires_at")))


def leases_from_mapping(data: Mapping[str, Mapping[str, Any]] | None) -> tuple[Lease, ...]:
    """Leases as a backend stores them (``{key: lease}``), oldest first."""
    leases = [Lease.from_dict(value) for value in (data or {}).values()]
    return tuple(sorted(leases, key=lambda lease: lease.acquired_at))


def leases_to_mapping(leases: Collection[Lease]) -> dict[str, dict[str, Any]]:
    return {lease.key: lease.to_dict() for lease in leases}


def with_lease(leases: Collection[Lease], lease: Lease) -> tuple[Lease, ...]:
    """``leases`` plus ``lease`` (a task's retry keeps its first lease's time)."""
    if any(held.key == lease.key for held in leases):
        return tuple(leases)
    return (*leases, lease)


def check_same_spec(name: str, recorded: Mapping[str, Any] | None, requested: ClusterSpec) -> None:
    """Refuse to hand a cluster created from one spec to a request for another (a silent mismatch
    would run a 64-CPU job on a 1-CPU cluster). Clusters recorded without a spec are not compared."""
    if recorded is None:
        return
    differences = requested.differences_from(recorded)
    if differences:
        raise ClusterSpecMismatchError(
            f"job_configuration.cluster: Ray cluster {name!r} already exists with a different spec "
            f"({'; '.join(differences)}); request the same spec, or another cluster name"
        )


@dataclass(frozen=True)
class DeleteCondition:
    """What a compare-and-delete checks atomically with the delete (failing: :class:`ClusterBusyError`).

    :param inactive_since: no activity may have been marked after this moment (garbage collection's
        idle decision still holds).
    :param expired_leases: keys of the only leases that may remain (their runs are over); any other
        lease keeps the cluster.
    """

    inactive_since: datetime | None = None
    expired_leases: frozenset[str] = frozenset()

    def check(
        self, name: str, last_active_at: datetime | None, leases: Collection[Lease], active_jobs: Collection[str]
    ) -> None:
        if self.inactive_since is not None and last_active_at is not None and last_active_at > self.inactive_since:
            raise ClusterBusyError(f"cluster {name!r} was active at {last_active_at}, after {self.inactive_since}")
        held = [str(lease) for lease in leases if lease.key not in self.expired_leases]
        if held:
            raise ClusterBusyError(f"cluster {name!r} is leased by {'; '.join(held)}")
        if active_jobs:
            raise ClusterBusyError(f"cluster {name!r} has active jobs {sorted(active_jobs)}")


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
    leases: tuple[Lease, ...] = ()
    #: The spec it was created from (``ClusterSpec.recorded()``), if the backend recorded one.
    spec: Mapping[str, Any] | None = None
    #: Whether its processes run in the local backend's sandbox (None: a backend whose clusters are
    #: isolated otherwise, KubeRay's pods).
    sandboxed: bool | None = None
    #: Why nothing can use it (the backend's own record of it cannot be read): the cleanup DAG deletes it.
    unusable: str | None = None

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


@dataclass(frozen=True)
class RayConnection:
    """What a Ray client outside a job needs to reach a cluster: where, and how it authenticates.

    :param address: what ``ray.init(address=...)`` takes (the GCS on the local backend, Ray Client's
        ``ray://`` address elsewhere); None when this backend cannot say.
    :param dashboard_url: the Ray dashboard and Jobs API.
    :param token: Ray's authentication token for the cluster, if it checks one: the credential this
        process itself presents, so it is never printed (``repr`` leaves it out).
    """

    address: str | None
    dashboard_url: str | None
    token: str | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        """The variables Ray's own client reads (``RAY_ADDRESS``, ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``)."""
        env = {"RAY_ADDRESS": self.address} if self.address else {}
        if self.token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env


@runtime_checkable
class RayBackend(Protocol):
    """Where clusters live. ``local`` and ``kuberay`` implement it."""

    name: str

    def validate_configuration(self, config: JobConfiguration) -> None:
        """Raise (naming the field and the rule) if this backend cannot run ``config``; called before
        anything is created."""

    def create_or_get_cluster(
        self, name: str, spec: ClusterSpec, labels: Mapping[str, str], lease: Lease | None = None
    ) -> ClusterInfo:
        """Create the cluster, or return the existing one of that name; never two.

        With ``lease``, the lease is taken atomically with the create or get (no delete can fall
        between them); an existing cluster of another recorded spec raises
        :class:`ClusterSpecMismatchError` and is not leased.
        """

    def acquire_lease(self, name: str, lease: Lease) -> ClusterInfo:
        """Take (or keep) ``lease`` on an existing cluster and mark it active; ClusterNotFoundError if none."""

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        """Drop the leases of these keys (those absent are ignored); None when the cluster is gone."""

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        """Current state, or None when no such cluster exists."""

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        """Clusters of this backend whose labels include ``labels``."""

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:
        """Delete the cluster; False when it did not exist.

        With ``condition`` (a compare-and-delete: garbage collection, a shared cluster's teardown) raise
        :class:`ClusterBusyError` instead if the cluster is still leased, has a pending or running job,
        or saw activity after the condition's mark, checked atomically with the delete.
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

    def connection(self, cluster_name: str, *, valid_for: timedelta | None = None) -> RayConnection:
        """How a Ray client reaches the cluster from here, with the token this process authenticates with
        (an interactive session's; and what a job's result must never carry); ClusterNotFoundError if none.
        ``valid_for``: how long the token must stay valid (a session's hold); a backend whose tokens
        expire issues one that long, the others' do not expire."""


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
class IncrementalLogs(Protocol):
    """A backend that reads a running job's driver log from an offset (never the whole log again)."""

    def job_log_since(
        self, cluster_name: str, submission_id: str, offset: int, *, complete_lines: bool = True
    ) -> tuple[str, int]:
        """(text after byte ``offset``, the offset after it); with ``complete_lines``, whole lines only."""


@runtime_checkable
class SandboxingBackend(Protocol):
    """A backend whose clusters run in a sandbox of its own where the machine allows one (local)."""

    def sandbox_refusal(self) -> str | None:
        """Why a cluster created now would run outside the sandbox (None: it would run inside)."""


@runtime_checkable
class BulkJobListing(Protocol):
    """A backend that lists every cluster's jobs at once (garbage collection then costs one call)."""

    def jobs_by_cluster(self) -> dict[str, list[JobInfo]]:
        """Every job this backend knows, by the name of the cluster it runs on."""
