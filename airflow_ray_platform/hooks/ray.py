"""``RayHook``: the ``ray`` connection, resolved to a backend.

Connection forms:

* no connection, or extras ``{"backend": "local", "root_dir": …}``: the embedded local backend;
* host / port (and schema ``https``) of a Ray dashboard, token in the password, extras
  ``{"cluster_name": …, "verify": true | false | "/path/ca.pem"}``: an existing cluster (jobs only);
* extras ``{"backend": "kuberay", …}``: the KubeRay backend (its own options).

The hook is the Airflow-facing surface; the work happens in the backend, whose job calls are Ray's
``JobSubmissionClient``. Secrets (the connection password, cluster tokens) never leave the backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import cached_property
from typing import Any

from airflow.exceptions import AirflowNotFoundException
from airflow.sdk.bases.hook import BaseHook

from airflow_ray_platform.backends import get_backend
from airflow_ray_platform.backends.base import (
    ClusterFailedError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    JobInfo,
    JobState,
    RayBackend,
)
from airflow_ray_platform.config import ClusterSpec, JobSpec
from airflow_ray_platform.utilisation import scrape


class RayHook(BaseHook):
    """Interact with Ray clusters and jobs through the backend a ``ray`` connection names.

    :param ray_conn_id: the ``ray`` connection; a missing ``ray_default`` means the local backend.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {
                "host": "Ray dashboard host (empty for a backend named in Extra)",
                "port": "Ray dashboard port",
                "schema": "Scheme (http or https)",
                "password": "Ray cluster token",
            },
            "placeholders": {
                "extra": '{"backend": "local"} or {"backend": "kuberay", "kubernetes_conn_id": "kubernetes_default"}',
                "host": "ray-head.example.internal",
                "port": "8265",
            },
        }

    def __init__(self, ray_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id

    @cached_property
    def backend(self) -> RayBackend:
        name, options = self.backend_spec()
        return get_backend(name, **options)

    def backend_spec(self) -> tuple[str, dict[str, Any]]:
        """(backend name, options) from the connection."""
        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            if self.ray_conn_id != self.default_conn_name:
                raise
            return "local", {}
        extra = dict(conn.extra_dejson)
        if conn.host:
            scheme = conn.schema or "http"
            address = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
            options = {"address": address, "token": conn.password or None}
            options.update({key: extra[key] for key in ("cluster_name", "verify") if key in extra})
            return "dashboard", options
        name = extra.pop("backend", "local")
        return name, extra

    # ----------------------------------------------------------------- clusters
    def create_or_get_cluster(self, name: str, spec: ClusterSpec, labels: Mapping[str, str]) -> ClusterInfo:
        return self.backend.create_or_get_cluster(name, spec, labels)

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        return self.backend.describe_cluster(name)

    def wait_for_cluster(self, name: str, timeout: float, poll_interval: float = 1.0) -> ClusterInfo:
        """Block until the cluster is READY; raise with the backend's reason if it fails or times out."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.backend.describe_cluster(name)
            outcome = cluster_wait_outcome(name, info, timed_out=time.monotonic() >= deadline, timeout=timeout)
            if outcome is not None:
                return outcome
            time.sleep(poll_interval)

    def delete_cluster(self, name: str, if_inactive_since: datetime | None = None) -> bool:
        return self.backend.delete_cluster(name, if_inactive_since)

    # --------------------------------------------------------------------- jobs
    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        return self.backend.submit_job(cluster_name, submission_id, job, metadata)

    def get_job_info(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        return self.backend.describe_job(cluster_name, submission_id)

    def get_job_status(self, cluster_name: str, submission_id: str) -> JobState | None:
        info = self.backend.describe_job(cluster_name, submission_id)
        return None if info is None else info.state

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        return self.backend.list_jobs(cluster_name)

    def get_job_logs(self, cluster_name: str, submission_id: str) -> str:
        return self.backend.job_logs(cluster_name, submission_id)

    def stream_job_logs(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        """A finished job's whole driver log in chunks, never whole in memory (what gets persisted)."""
        return self.backend.job_log_chunks(cluster_name, submission_id)

    def tail_job_logs(self, cluster_name: str, submission_id: str, offset: int = 0) -> tuple[str, int]:
        """The log written since ``offset`` characters, and the new offset."""
        logs = self.backend.job_logs(cluster_name, submission_id)
        return logs[offset:], len(logs)

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        return self.backend.stop_job(cluster_name, submission_id)

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        return self.backend.job_dashboard_url(cluster_name, submission_id)

    def sample_utilisation(self, cluster_name: str) -> tuple[float | None, float | None]:
        """(CPU %, GPU %) of the cluster's nodes now, from their Prometheus metrics; Nones if unreachable."""
        urls = self.backend.metrics_urls(cluster_name)
        return scrape(urls) if urls else (None, None)

    def read_persisted_job_log(
        self, submission_id: str, state_store_conn_id: str | None = None, log_storage_uri: str | None = None
    ) -> str:
        """A finished job's whole driver log from log storage: readable after its cluster is gone."""
        from airflow_ray_platform.lifecycle import read_job_log

        return b"".join(read_job_log(submission_id, state_store_conn_id, log_storage_uri)).decode(errors="replace")


def cluster_wait_outcome(name: str, info: ClusterInfo | None, *, timed_out: bool, timeout: float) -> ClusterInfo | None:
    """One step of waiting for a cluster, shared by the blocking hook and the async trigger.

    Returns the info once READY, None to keep waiting, and raises with the backend's reason when the
    cluster is gone, failed, or not ready within ``timeout`` seconds.
    """
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
