"""A run's cluster: which one a job runs on, creating it when the configuration asks, and waiting until ready.

The operators, the trigger and ``airflow-ray submit`` all go through here, so they find the same cluster,
take the same lease on a shared one, and fail the same way when it does not come up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from airflow_ray_platform.backends.base import (
    ClusterFailedError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    Lease,
    RayBackend,
)
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.spec.models import JobConfiguration, validate_cluster_name
from airflow_ray_platform.spec.naming import TaskIdentity, cluster_labels
from airflow_ray_platform.spec.timestamps import utc_now


@dataclass(frozen=True)
class RunCluster:
    """The cluster a run's job goes to, and whether it is the run's own (``ephemeral``: deleted after the
    job as ``lifecycle.cleanup`` says) rather than a shared one the run holds a lease on."""

    info: ClusterInfo
    ephemeral: bool


def resolve_cluster(
    backend: RayBackend,
    config: JobConfiguration,
    identity: TaskIdentity,
    *,
    cluster_name: str | None = None,
    cluster_name_field: str = "cluster_name",
    recorder: LifecycleRecorder | None = None,
) -> RunCluster:
    """Where a run's job goes, in order: ``cluster_name`` (an existing cluster, e.g. an upstream
    ``RayClusterOperator``'s XCom), else ``job_configuration.cluster`` when it only names one, else a
    cluster created from the spec: the run's own with ``lifecycle.cleanup`` ``always`` or ``on_success``,
    the named shared one with ``never``. A shared cluster is leased for the run (``identity``'s DAG run)
    in the same step as it is found or created; the run's own is not leased."""
    if cluster_name:
        validate_cluster_name(cluster_name, cluster_name_field)
        return RunCluster(lease_existing(backend, cluster_name, identity, cluster_name_field, recorder), False)
    if config.lifecycle.ephemeral_cluster and not config.cluster.reuses_existing:
        name = identity.ephemeral_cluster_name(config.name)
        return RunCluster(create_or_get_cluster(backend, config, name, identity, lease=None, recorder=recorder), True)
    return RunCluster(shared_cluster(backend, config, identity, recorder), False)


def shared_cluster(
    backend: RayBackend,
    config: JobConfiguration,
    identity: TaskIdentity,
    recorder: LifecycleRecorder | None,
    *,
    expires_at: datetime | None = None,
) -> ClusterInfo:
    """The named cluster of ``config``, leased for ``identity``'s DAG run (or until ``expires_at``: an
    interactive session's): the existing one when the configuration only names it (nothing is created),
    else created from its spec if missing (``RayClusterOperator``'s cluster, a job's with
    ``lifecycle.cleanup: never``, a notebook's)."""
    if config.cluster.reuses_existing:
        field = "job_configuration.cluster.name"
        return lease_existing(backend, config.cluster_name, identity, field, recorder, expires_at=expires_at)
    lease = Lease(identity, utc_now(), expires_at)
    info = create_or_get_cluster(backend, config, config.cluster_name, identity, lease=lease, recorder=recorder)
    metrics.LEASE_TAKEN(backend=backend.name, team=info.team)
    return info


def lease_existing(
    backend: RayBackend,
    name: str,
    identity: TaskIdentity,
    field: str,
    recorder: LifecycleRecorder | None,
    *,
    expires_at: datetime | None = None,
) -> ClusterInfo:
    """The existing cluster ``field`` names, leased for ``identity``'s DAG run (or until ``expires_at``);
    an error naming that field if there is none (nothing is created)."""
    try:
        info = backend.acquire_lease(name, Lease(identity, utc_now(), expires_at))
    except ClusterNotFoundError:
        why = " (a configuration with only a name reuses, never creates)" if "." in field else ""
        raise ClusterNotFoundError(
            f"{field}: Ray cluster {name!r} does not exist on backend {backend.name!r}{why}"
        ) from None
    metrics.LEASE_TAKEN(backend=backend.name, team=info.team)
    if recorder is not None:
        recorder.cluster_seen(info)  # who holds it now, on its record
    return info


def release_leases(
    backend: RayBackend, name: str, keys: list[str], recorder: LifecycleRecorder | None
) -> ClusterInfo | None:
    """Release the leases ``keys`` on cluster ``name`` (a run's teardown, a session's or a command's end,
    expired ones by the cleanup sweep), with who still holds it on its record; None if it is gone."""
    released = backend.release_leases(name, keys)
    if released is not None:
        metrics.LEASE_RELEASED(len(keys), backend=backend.name, team=released.team)
        if recorder is not None:
            recorder.cluster_seen(released)
    return released


def cluster_outcome(name: str, info: ClusterInfo | None, *, timed_out: bool, timeout: float) -> ClusterInfo | None:
    """One step of waiting for a cluster: the info once READY, None to keep waiting; raises with the
    backend's reason when the cluster is gone, failed, or not ready within ``timeout`` seconds."""
    if info is None:
        raise ClusterNotFoundError(f"Ray cluster {name!r} does not exist")
    if info.state == ClusterState.READY:
        return info
    if info.state == ClusterState.FAILED:
        raise ClusterFailedError(f"Ray cluster {name!r} failed to start: {info.message}")
    if timed_out:
        raise ClusterFailedError(
            f"Ray cluster {name!r} was not ready within {timeout:.0f}s (startup timeout); last state "
            f"{info.state}: {info.message or 'no detail'}"
        )
    return None


def wait_for_cluster(
    backend: RayBackend, name: str, timeout: float, poll_interval: float = 1.0, within: float | None = None
) -> ClusterInfo | None:
    """Block until the cluster is READY; raise with the backend's reason if it fails or times out; None
    if it is still starting after ``within`` seconds (0: after one look, as a deferrable operator looks)."""
    started = time.monotonic()
    while True:
        info = backend.describe_cluster(name)
        elapsed = time.monotonic() - started
        ready = cluster_outcome(name, info, timed_out=elapsed >= timeout, timeout=timeout)
        if ready is not None:
            return ready
        if within is not None and elapsed >= within:
            return None
        time.sleep(poll_interval)


def create_or_get_cluster(
    backend: RayBackend,
    config: JobConfiguration,
    name: str,
    identity: TaskIdentity,
    *,
    lease: Lease | None,
    recorder: LifecycleRecorder | None,
) -> ClusterInfo:
    """The cluster ``config`` describes, under ``name``, created if missing (checked by the backend
    first), labelled with its owner, team, lifetimes and the task that asked; an existing one created
    from another spec is an error naming the difference. ``lease``: held on a shared cluster (None: the
    run's own ephemeral cluster). The operators and the CLI create clusters through here alone."""
    backend.validate_configuration(config)
    spec = config.cluster
    labels = cluster_labels(
        owner=config.owner,
        team=config.team,
        idle_timeout_seconds=int(spec.idle_timeout.total_seconds()),
        max_lifetime_seconds=int(spec.max_lifetime.total_seconds()),
        identity=identity,
        ephemeral=lease is None,
        extra=spec.labels,
    )
    info = backend.create_or_get_cluster(name, spec, labels, lease)
    if recorder is not None:
        recorder.cluster_seen(info, requested=True)
    return info
