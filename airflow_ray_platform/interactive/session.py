"""Interactive sessions: a leased cluster and what a Ray client needs to reach it (see the package)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_ray_platform import settings
from airflow_ray_platform.backends.base import RayConnection
from airflow_ray_platform.backends.retries import client_connect
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.runs.cluster import release_leases, shared_cluster, wait_for_cluster
from airflow_ray_platform.spec.models import JobConfiguration, load_job_configuration
from airflow_ray_platform.spec.naming import SESSION_DAG_ID, TaskIdentity
from airflow_ray_platform.spec.timestamps import utc_now
from airflow_ray_platform.tenancy.connected import DEFAULT_RAY_CONN_ID, connected_backend
from airflow_ray_platform.tenancy.policy import Actor, configured_policy, os_user

log = logging.getLogger(__name__)

#: How long a session's lease outlives a process that died without releasing it.
DEFAULT_HOLD = timedelta(hours=8)


@dataclass(frozen=True)
class RaySession:
    """A leased cluster and how to reach it: ``address`` for ``ray.init``, the dashboard, the token
    (never shown: ``repr`` leaves it out)."""

    cluster_name: str
    backend: str
    connection: RayConnection
    lease_expires_at: datetime

    @property
    def address(self) -> str | None:
        return self.connection.address

    @property
    def dashboard_url(self) -> str | None:
        return self.connection.dashboard_url

    @property
    def environment(self) -> dict[str, str]:
        """The variables Ray's client reads: for a child process (``airflow-ray session -- …``)."""
        return self.connection.environment()

    def init(self, **kwargs: Any) -> Any:
        """``ray.init`` on this cluster, authenticated with its token (set in this process's environment,
        where Ray's client reads it); ``kwargs`` go to ``ray.init``."""
        import ray
        from ray._raylet import AuthenticationTokenLoader, Config

        os.environ.update(self.environment)
        # Ray reads its authentication mode and token once per process, perhaps before this session (the
        # Jobs API client of the backend does): have it read this cluster's, as Ray's own test helpers do.
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        return client_connect(log)(ray.init, address=self.address, **kwargs)


def _session_identity(config: JobConfiguration, user: str | None) -> TaskIdentity:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return TaskIdentity(SESSION_DAG_ID, config.name, f"session__{(user or 'unknown').removeprefix('os:')}__{stamp}")


@contextmanager
def ray_cluster(
    job_configuration: JobConfiguration | Mapping[str, Any] | str | Path,
    *,
    ray_conn_id: str = DEFAULT_RAY_CONN_ID,
    team: str | None = None,
    hold_for: timedelta = DEFAULT_HOLD,
    state_store_conn_id: str | None = None,
) -> Iterator[RaySession]:
    """The cluster ``job_configuration`` describes (or names), leased for this block.

    :param job_configuration: a dict, a YAML/JSON file path or a ``JobConfiguration``; its ``job`` is not
        run (the session is yours to use).
    :param ray_conn_id: the ``ray`` connection naming the backend, as for the operators.
    :param team: the team you act for: required under a platform policy, and the configuration's.
    :param hold_for: how long the lease holds if this process dies without leaving the block.
    :param state_store_conn_id: the state store (default ``[ray_platform]``, else SQLite).
    """
    config = load_job_configuration(job_configuration)
    identity = _session_identity(config, os_user())
    actor = Actor.outside_airflow(team, identity, config.team)
    policy = configured_policy()
    if policy is not None:
        assert actor.team is not None
        policy.check_configuration(actor.team, config)
    recorder = LifecycleRecorder(state_store_conn_id or settings.state_store_conn_id())
    backend = connected_backend(ray_conn_id, actor, policy, recorder.audit, recorder.job_team)
    expires_at = utc_now() + hold_for
    info = shared_cluster(backend, config, identity, recorder, expires_at=expires_at)
    try:
        ready = wait_for_cluster(backend, info.name, config.lifecycle.startup_timeout.total_seconds(), 1.0)
        if ready is not None and ready.state != info.state:  # it started here: its READY on the record
            recorder.cluster_seen(ready)
        yield RaySession(info.name, backend.name, backend.connection(info.name, valid_for=hold_for), expires_at)
    finally:
        release_leases(backend, info.name, [identity.key], recorder)
