"""RayHook: connection forms resolved to backends, used against the real shared cluster."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest

from airflow_ray_platform.backends.base import BackendError
from airflow_ray_platform.backends.dashboard import DashboardBackend
from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.tenancy.authorization import AuthorizedBackend

from ..conftest import SHARED_CLUSTER


def _connection(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "ray", **fields}))


def _resolved(hook: RayHook):
    """The backend the connection names, behind the authorization check the hook puts in front of it."""
    backend = hook.backend
    assert isinstance(backend, AuthorizedBackend)
    return backend.inner


def test_missing_default_connection_means_the_local_backend():
    assert isinstance(_resolved(RayHook()), LocalBackend)


def test_extras_name_a_backend_and_its_options(monkeypatch, tmp_path):
    _connection(monkeypatch, "ray_local_custom", extra={"backend": "local", "root_dir": str(tmp_path)})
    backend = _resolved(RayHook("ray_local_custom"))
    assert isinstance(backend, LocalBackend) and backend.registry.root == tmp_path
    _connection(monkeypatch, "ray_unknown", extra={"backend": "slurm"})
    with pytest.raises(ValueError, match="unknown Ray backend 'slurm'; known backends"):
        _ = RayHook("ray_unknown").backend


def test_a_missing_named_connection_is_an_error():
    from airflow_ray_platform.connections import ConnectionNotFoundError

    with pytest.raises(ConnectionNotFoundError, match="no_such_connection"):
        _ = RayHook("no_such_connection").backend


def test_dashboard_connection_uses_the_token_from_the_password(monkeypatch, backend, shared_cluster):
    address = urlsplit(shared_cluster.dashboard_url)
    token = backend.registry.read_token(SHARED_CLUSTER)
    _connection(
        monkeypatch,
        "ray_existing",
        host=address.hostname,
        port=address.port,
        password=token,
        extra={"cluster_name": "existing"},
    )
    hook = RayHook("ray_existing").backend
    assert isinstance(_resolved(RayHook("ray_existing")), DashboardBackend)
    info = hook.submit_job("existing", "hook-dashboard-1", JobSpec(entrypoint="echo via-dashboard"), {})
    assert info.submission_id == "hook-dashboard-1"
    assert "hook-dashboard-1" in [job.submission_id for job in hook.list_jobs("existing")]
    existing = hook.describe_cluster("existing")
    assert existing.state == "READY"
    # Created when its head started (records and persisted logs are keyed by it), not at the epoch.
    assert abs((existing.created_at - shared_cluster.created_at).total_seconds()) < 120
    with pytest.raises(BackendError, match="cannot create clusters"):
        hook.create_or_get_cluster("new-one", ClusterSpec(head={"cpu": "1"}), {})
    with pytest.raises(BackendError, match="airflow-ray-platform does not manage it"):
        hook.delete_cluster("existing")  # refused before the backend is asked (which refuses too)
    with pytest.raises(BackendError, match="does not delete"):
        _resolved(RayHook("ray_existing")).delete_cluster("existing")


def test_wrong_token_is_a_clear_error_that_does_not_echo_it(monkeypatch, shared_cluster):
    address = urlsplit(shared_cluster.dashboard_url)
    _connection(
        monkeypatch,
        "ray_wrong",
        host=address.hostname,
        port=address.port,
        password="wrong-secret-token",
        extra={"cluster_name": "existing"},
    )
    with pytest.raises(BackendError) as raised:
        RayHook("ray_wrong").backend.list_jobs("existing")
    assert "Invalid authentication token" in str(raised.value)
    assert "wrong-secret-token" not in str(raised.value)


def test_a_refused_token_fails_the_cluster_at_once(monkeypatch, shared_cluster):
    """Found by review: 401/403 read as "still provisioning", so the task waited out its startup timeout."""
    from airflow_ray_platform.backends.base import ClusterState
    from airflow_ray_platform.runs.cluster import wait_for_cluster

    address = urlsplit(shared_cluster.dashboard_url)
    _connection(monkeypatch, "ray_refused", host=address.hostname, port=address.port, password="wrong-token")
    backend = RayHook("ray_refused").backend
    info = backend.describe_cluster("default")
    assert info.state == ClusterState.FAILED and "wrong-token" not in (info.message or "")
    with pytest.raises(BackendError, match="Invalid authentication token"):
        wait_for_cluster(backend, "default", timeout=600, poll_interval=0.5)  # at once, not after 600 s


def test_a_dashboard_beyond_this_machine_needs_https_unless_told_otherwise(monkeypatch):
    _connection(monkeypatch, "ray_remote", host="ray.example.internal", port=8265, password="t")
    with pytest.raises(BackendError, match="is not https"):
        _ = RayHook("ray_remote").backend
    _connection(monkeypatch, "ray_remote_tls", host="ray.example.internal", port=8265, schema="https", password="t")
    assert isinstance(_resolved(RayHook("ray_remote_tls")), DashboardBackend)
    _connection(monkeypatch, "ray_remote_http", host="ray.example.internal", port=1, extra={"allow_http": True})
    assert isinstance(_resolved(RayHook("ray_remote_http")), DashboardBackend)


def test_a_finished_jobs_log_is_read_from_rays_log_file_endpoint_whole_and_streamed(
    monkeypatch, backend, shared_cluster
):
    """Ray's websocket tail only closes ~5 s after a finished job's end (every deferred task waited for it);
    the log-file endpoint streams the file and ends at its end."""
    from airflow_ray_platform.backends.jobs_api import JobsApiClient

    def no_tail(self, submission_id):
        raise AssertionError("fell back to the websocket tail")

    monkeypatch.setattr(JobsApiClient, "tail", no_tail)
    client = JobsApiClient("existing", shared_cluster.dashboard_url, backend.registry.read_token(SHARED_CLUSTER))
    script = "import sys; [sys.stdout.write(f'{i} ' + 'y' * 1000 + chr(10)) for i in range(3000)]"
    client.submit("dashboard-log-file-1", JobSpec(entrypoint=f'python -c "{script}"'), {})
    while not client.describe("dashboard-log-file-1").state.is_terminal:
        time.sleep(0.2)
    chunks = list(client.log_chunks("dashboard-log-file-1"))
    whole = client.logs("dashboard-log-file-1")
    assert b"".join(chunks).decode() == whole and "2999 yyy" in whole
    assert max(len(chunk) for chunk in chunks) <= 8 * 1024 * 1024
