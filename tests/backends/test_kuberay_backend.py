"""The kuberay backend against the emulated Kubernetes API and the simulated KubeRay (real Ray behind it)."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from kubernetes import client, config

from airflow_ray_platform.backends.base import BackendError, ClusterBusyError, ClusterState, DeleteCondition, JobState
from airflow_ray_platform.backends.kuberay.backend import KubeRayBackend
from airflow_ray_platform.backends.kuberay.manifests import render_ray_cluster
from airflow_ray_platform.backends.kuberay.status import job_state
from airflow_ray_platform.runs.cluster import cluster_outcome
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.spec.naming import CLUSTER_LABEL

from ..conftest import SHARED_CLUSTER
from ..kube_emulator.api_server import KUBECONFIG_TOKEN, KubernetesApiEmulator
from ..kube_emulator.kuberay_controller import UNPULLABLE_IMAGE
from ..kube_emulator.ray_kubernetes_auth import KubernetesTokenAuthHead
from ..waiting import wait_for

LABELS = {"app.kubernetes.io/managed-by": "airflow-ray-platform", "airflow-ray-platform.io/team": "platform"}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, JobState.PENDING),
        ({"jobDeploymentStatus": "Initializing"}, JobState.PENDING),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, JobState.RUNNING),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, JobState.SUCCEEDED),
        ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}, JobState.FAILED),
        ({"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded"}, JobState.FAILED),
        ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed"}, JobState.FAILED),
        ({"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed"}, JobState.FAILED),
        ({"jobDeploymentStatus": "Suspended"}, JobState.STOPPED),
        ({"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"}, JobState.STOPPED),
    ],
)
def test_rayjob_status_maps_onto_ray_job_states(status, state):
    assert job_state(status) == state


#: The dedicated service account of Jobs API calls (deploy/kuberay-rbac.yaml's).
JOBS_API = "ray-jobs-api"


def _jobs_api_account(kuberay) -> None:
    """The Jobs API's service account in the emulated namespace, as deploy/kuberay-rbac.yaml makes it."""
    if ("serviceaccounts", "default", JOBS_API) not in kuberay.emulator.store.objects:
        kuberay.emulator.store.create("serviceaccounts", "default", {"metadata": {"name": JOBS_API}})


def test_missing_crds_fail_at_once_saying_so(session_dir, monkeypatch):
    emulator = KubernetesApiEmulator(crds_installed=False).start()
    try:
        kubeconfig = emulator.write_kubeconfig(session_dir / "no-crds.json")
        monkeypatch.setenv(
            "AIRFLOW_CONN_K8S_NO_KUBERAY",
            json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}),
        )
        backend = KubeRayBackend("k8s_no_kuberay")
        with pytest.raises(BackendError, match=r"KubeRay CRDs .* are not installed.*never installs it"):
            backend.create_or_get_cluster("c1", ClusterSpec(), LABELS)
        assert emulator.store.objects == {}
    finally:
        emulator.stop()


def test_server_rejects_a_misspelt_field_strictly(kuberay, session_dir):
    """The API server (emulated) refuses unknown fields under strict field validation, naming the path."""
    manifest = render_ray_cluster("typo", "default", ClusterSpec(), LABELS, {})
    manifest["spec"]["headGroupSpec"]["rayStartParms"] = {}
    kubeconfig = kuberay.emulator.write_kubeconfig(session_dir / "typo.json")
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
    with pytest.raises(client.ApiException) as raised:
        api.create_namespaced_custom_object(
            "ray.io", "v1", "default", "rayclusters", manifest, field_validation="Strict"
        )
    assert raised.value.status == 422
    assert "spec.headGroupSpec: Additional properties are not allowed ('rayStartParms'" in raised.value.body
    with pytest.raises(client.ApiException) as missing:
        api.get_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", "typo")
    assert missing.value.status == 404


def test_unschedulable_cluster_reports_why_then_times_out_and_is_compare_and_deleted(kuberay):
    backend = kuberay.backend
    spec = ClusterSpec(head={"cpu": "64", "memory": "1Gi"})
    first = backend.create_or_get_cluster("too-big", spec, LABELS)
    again = backend.create_or_get_cluster("too-big", spec, LABELS)  # 409 -> the existing object
    assert first.created_at == again.created_at and first.state == ClusterState.PROVISIONING
    info = wait_for(lambda: (i := backend.describe_cluster("too-big")) and "Unschedulable" in (i.message or "") and i)
    assert "Insufficient cpu" in info.message
    with pytest.raises(BackendError, match=r"not ready within 1s .*Unschedulable: 0/1 nodes are available"):
        cluster_outcome("too-big", info, timed_out=True, timeout=1)
    assert [c.name for c in backend.list_clusters({"airflow-ray-platform.io/team": "platform"})] == ["too-big"]
    # Compare-and-delete: a mark older than the last activity refuses; a current one deletes.
    with pytest.raises(ClusterBusyError, match="was active at"):
        backend.delete_cluster("too-big", DeleteCondition(inactive_since=info.last_active_at - timedelta(seconds=1)))
    assert backend.delete_cluster("too-big", DeleteCondition(inactive_since=datetime.now(UTC) + timedelta(seconds=1)))
    assert backend.describe_cluster("too-big") is None
    assert backend.delete_cluster("too-big") is False


def test_unpullable_image_surfaces_the_pull_error(kuberay):
    backend = kuberay.backend
    backend.create_or_get_cluster("bad-image", ClusterSpec(image=f"registry.example/{UNPULLABLE_IMAGE}:1"), LABELS)
    try:
        info = wait_for(
            lambda: (i := backend.describe_cluster("bad-image")) and "ErrImagePull" in (i.message or "") and i
        )
        assert info.state == ClusterState.PROVISIONING
        assert f'failed to pull image "registry.example/{UNPULLABLE_IMAGE}:1"' in info.message
    finally:
        backend.delete_cluster("bad-image")


def test_job_on_a_named_cluster_submits_once_logs_from_the_submitter_pod_and_stops(kuberay, local_backend):
    backend = kuberay.backend
    assert backend.describe_cluster(SHARED_CLUSTER).state == ClusterState.READY
    job = JobSpec(entrypoint="python -c \"import time; print('from the driver', flush=True); time.sleep(300)\"")
    metadata = {"airflow_task_key": "d/t/r/-1", "airflow_dag_id": "d", "airflow_run_id": "manual__2026-01-01T00:00"}
    submitted = backend.submit_job(SHARED_CLUSTER, "kuberay-backend-job-1", job, metadata)
    assert (
        backend.submit_job(SHARED_CLUSTER, "kuberay-backend-job-1", job, metadata).submission_id
        == submitted.submission_id
    )
    running = wait_for(
        lambda: (j := backend.describe_job(SHARED_CLUSTER, "kuberay-backend-job-1")) and j.state == "RUNNING" and j
    )
    assert running.metadata["airflow_task_key"] == "d/t/r/-1"
    assert [j.submission_id for j in backend.list_jobs(SHARED_CLUSTER)].count("kuberay-backend-job-1") == 1
    rayjob = kuberay.emulator.store.get("rayjobs", "default", "kuberay-backend-job-1")
    assert rayjob["metadata"]["labels"][CLUSTER_LABEL] == SHARED_CLUSTER
    assert rayjob["metadata"]["labels"]["airflow-ray-platform.io/run-id"].startswith("manual__2026-01-01T00_00")
    assert (
        rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": SHARED_CLUSTER} and rayjob["spec"]["backoffLimit"] == 0
    )
    wait_for(lambda: "from the driver" in backend.job_logs(SHARED_CLUSTER, "kuberay-backend-job-1"))
    assert b"from the driver" in b"".join(backend.job_log_chunks(SHARED_CLUSTER, "kuberay-backend-job-1"))
    # Stopping deletes the RayJob; KubeRay (simulated) then stops the Ray job itself.
    assert backend.stop_job(SHARED_CLUSTER, "kuberay-backend-job-1")
    assert backend.describe_job(SHARED_CLUSTER, "kuberay-backend-job-1") is None
    wait_for(lambda: local_backend.describe_job(SHARED_CLUSTER, "kuberay-backend-job-1").state == JobState.STOPPED)
    assert backend.stop_job(SHARED_CLUSTER, "kuberay-backend-job-1") is False


def test_a_running_jobs_log_is_followed_once_for_every_reader_and_each_byte_fetched_once(kuberay, local_backend):
    """Two readers in one process (two triggers' backends) read a chatty job's log from their offsets
    while it runs: one followed read of the submitter pod's log serves both, never a whole read."""
    script = "import time\nfor i in range(30):\n    print('line', i, 'x' * 100, flush=True); time.sleep(0.1)"
    kuberay.backend.submit_job(
        SHARED_CLUSTER, "kuberay-backend-follow", JobSpec(entrypoint=f'python -c "{script}"'), {}
    )
    readers = [KubeRayBackend(kuberay.connection), KubeRayBackend(kuberay.connection)]
    before = dict(kuberay.emulator.requests)
    offsets, texts = [0, 0], ["", ""]
    while True:
        state = kuberay.backend.describe_job(SHARED_CLUSTER, "kuberay-backend-follow").state
        for index, reader in enumerate(readers):
            text, offsets[index] = reader.job_log_since(
                SHARED_CLUSTER, "kuberay-backend-follow", offsets[index], complete_lines=not state.is_terminal
            )
            assert text == "" or text.endswith("\n")  # whole lines while the job runs
            texts[index] += text
        if state.is_terminal:
            break
        time.sleep(0.3)
    whole = local_backend.job_logs(SHARED_CLUSTER, "kuberay-backend-follow")
    assert "line 29" in whole and texts == [whole, whole]
    made = {key: kuberay.emulator.requests[key] - before.get(key, 0) for key in ("FOLLOW pods/log", "GET pods/log")}
    assert made == {"FOLLOW pods/log": 1, "GET pods/log": 0}, kuberay.emulator.requests


def test_submitting_to_a_missing_cluster_is_a_clear_error(kuberay):
    with pytest.raises(BackendError, match="no RayCluster 'nowhere' in namespace 'default'"):
        kuberay.backend.submit_job("nowhere", "kuberay-backend-job-2", JobSpec(entrypoint="true"), {})
    assert kuberay.backend.describe_job("nowhere", "kuberay-backend-job-2") is None


def test_the_documented_role_grants_exactly_the_calls_the_backend_makes(kuberay, local_backend):
    """deploy/kuberay-rbac.yaml (quoted in the README) against every call of every backend method: the
    Kubernetes API calls, and ``ray:write`` on the RayCluster, which the Ray head checks of the caller's
    Kubernetes credentials for a Jobs API call. Found by review: ``secrets: get`` on the whole namespace
    let every DAG read every cluster's token; no rule grants any Secret now."""
    import asyncio
    from pathlib import Path

    import yaml

    documents = list(yaml.safe_load_all((Path(__file__).parents[2] / "deploy" / "kuberay-rbac.yaml").read_text()))
    role, jobs_api_role = (doc for doc in documents if doc["kind"] == "Role")
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    before = dict(kuberay.emulator.requests)
    _jobs_api_account(kuberay)
    backend = KubeRayBackend(
        kuberay.connection, dashboard_url_template="http://127.0.0.1:1/{name}", jobs_api_service_account=JOBS_API
    )
    backend.create_or_get_cluster("rbac-check", ClusterSpec(head={"cpu": "64", "memory": "1Gi"}), LABELS)
    backend.describe_cluster("rbac-check")
    backend.list_clusters(LABELS)
    backend.submit_job("rbac-check", "rbac-check-job", JobSpec(entrypoint="true"), {"team": "platform"})
    backend.describe_job("rbac-check", "rbac-check-job")
    backend.list_jobs("rbac-check")
    # The submitter pod KubeRay would start once the cluster were ready (this one never will be).
    submitter = {"metadata": {"name": "rbac-check-job-x", "labels": {"job-name": "rbac-check-job"}}}
    kuberay.emulator.store.create("pods", "default", submitter)
    assert KubeRayBackend(kuberay.connection).job_logs("rbac-check", "rbac-check-job") == ""
    assert KubeRayBackend(kuberay.connection).job_log_since("rbac-check", "rbac-check-job", 0) == ("", 0)
    kuberay.emulator.store.delete("pods", "default", "rbac-check-job-x")
    with pytest.raises(BackendError):  # the dashboard is not there (no Secret is read to find out)
        backend.job_logs("rbac-check", "rbac-check-job")
    asyncio.run(backend.await_job("rbac-check", "rbac-check-job", 1))
    asyncio.run(backend.await_cluster("rbac-check", 1))
    backend.stop_job("rbac-check", "rbac-check-job")
    backend.delete_cluster("rbac-check", DeleteCondition(inactive_since=datetime.now(UTC) + timedelta(seconds=1)))
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "WATCH": "watch", "FOLLOW": "get"}
    used = set()
    for key, count in kuberay.emulator.requests.items():
        if count > before.get(key, 0):
            method, resource, *listing = key.split(" ")
            used.add((resource, "list" if listing else verbs.get(method, "get")))
    assert used == granted
    # what Jobs API calls present: an account that may use the clusters through Ray, and nothing else
    assert jobs_api_role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["ray:write"]}]
    assert jobs_api_role["metadata"]["name"] == JOBS_API
    assert not [rule for rule in role["rules"] if "secrets" in rule["resources"]]


def test_logs_through_the_jobs_api_authenticated_by_a_narrow_short_lived_token(kuberay, shared_cluster, local_backend):
    """With ``dashboard_url_template``, logs come from the Jobs API. Found by review: reading a cluster's
    token needed ``secrets: get`` on the whole namespace; then the connection's own Kubernetes token went
    to every Ray head instead, a token that may create and delete clusters and read every pod's log, to be
    caught by any job listening in place of a dashboard. A cluster created with ``ray_auth: kubernetes``
    (the default) now gets a 10-minute token of a dedicated account holding ``ray:write`` alone
    (TokenRequest); the connection's own token is never presented, and the head would refuse it."""
    shared = kuberay.emulator.store.get("rayclusters", "default", SHARED_CLUSTER)
    assert shared["spec"]["authOptions"] == {"mode": "token", "enableK8sTokenAuth": True}
    token = local_backend.registry.read_token(SHARED_CLUSTER)
    secret_reads = _secret_reads(kuberay)
    _jobs_api_account(kuberay)
    narrow = f"system:serviceaccount:default:{JOBS_API}"
    review = kuberay.emulator.review_token
    with KubernetesTokenAuthHead(SHARED_CLUSTER, shared_cluster.dashboard_url, token, review, {narrow}) as head:
        with pytest.raises(BackendError, match="'jobs_api_service_account' is required"):
            KubeRayBackend(kuberay.connection, dashboard_url_template=head.url)
        backend = KubeRayBackend(kuberay.connection, dashboard_url_template=head.url, jobs_api_service_account=JOBS_API)
        job = JobSpec(entrypoint="python -c \"print('via the dashboard')\"")
        backend.submit_job(SHARED_CLUSTER, "kuberay-backend-jobs-api", job, {})
        wait_for(lambda: backend.describe_job(SHARED_CLUSTER, "kuberay-backend-jobs-api").state == JobState.SUCCEEDED)
        # Without the submitter pod, only the Jobs API has the log.
        kuberay.emulator.store.delete("pods", "default", "kuberay-backend-jobs-api-submitter")
        logs = backend.job_logs(SHARED_CLUSTER, "kuberay-backend-jobs-api")
        # this head relays plain HTTP only, no websocket: Ray's log tail cannot be followed through it, so
        # the last read, the job being over, reads the log whole instead of losing it
        followed = backend.job_log_since(SHARED_CLUSTER, "kuberay-backend-jobs-api", 0, complete_lines=False)
        assert "via the dashboard" in logs and followed == (logs, len(logs.encode()))
        assert head.access_reviews and set(head.access_reviews) == {
            (narrow, "ray:write", "rayclusters", SHARED_CLUSTER)
        }
        issued = [entry for entry in kuberay.emulator.issued_tokens.values() if entry[0] == narrow]
        assert issued and all(expires - time.time() <= 600 for _, _, expires in issued)
        # A notebook's session holds its cluster for hours and cannot renew the token Ray's client holds:
        # it gets one of its own, of the same account, valid as long as its hold.
        session = backend.connection(SHARED_CLUSTER, valid_for=timedelta(hours=8)).token
        _, _, expires = kuberay.emulator.issued_tokens[session]
        assert review(session) == narrow and 8 * 3600 - 60 <= expires - time.time() <= 8 * 3600
        assert backend.connection(SHARED_CLUSTER).token != session  # a task's is the short, renewed one
        # the connection's own token (what went to the head before) is refused there: no ray:write
        refused = requests.get(f"{head.url}/api/jobs/", headers={"Authorization": f"Bearer {KUBECONFIG_TOKEN}"})
        assert refused.status_code == 403
        assert backend.job_dashboard_url(SHARED_CLUSTER, "kuberay-backend-jobs-api") == (
            f"{head.url}/#/jobs/kuberay-backend-jobs-api"
        )
        assert backend.describe_cluster(SHARED_CLUSTER).dashboard_url == head.url
    assert "via the dashboard" in logs
    assert logs == local_backend.job_logs(SHARED_CLUSTER, "kuberay-backend-jobs-api")
    assert _secret_reads(kuberay) == secret_reads == 0
    assert not [key for key in kuberay.emulator.store.objects if key[0] == "secrets"]


def test_a_cluster_with_a_static_token_is_read_with_the_token_from_its_secret(kuberay, shared_cluster, local_backend):
    """``ray_auth: secret`` (KubeRay before 1.7, Ray before 2.55): the cluster's static token from the
    Secret KubeRay made for it, which is then the one Secret the Jobs API calls read."""
    shared = kuberay.emulator.store.get("rayclusters", "default", SHARED_CLUSTER)
    static = copy.deepcopy(shared)
    static["spec"]["authOptions"] = {"mode": "token"}  # as ray_auth 'secret' creates it
    kuberay.emulator.store.update("rayclusters", "default", SHARED_CLUSTER, static, status=False)
    try:
        wait_for(lambda: ("secrets", "default", SHARED_CLUSTER) in kuberay.emulator.store.objects)
        backend = KubeRayBackend(
            kuberay.connection, dashboard_url_template=shared_cluster.dashboard_url, ray_auth="secret"
        )
        job = JobSpec(entrypoint="python -c \"print('with the static token')\"")
        backend.submit_job(SHARED_CLUSTER, "kuberay-backend-jobs-api-secret", job, {})
        wait_for(
            lambda: backend.describe_job(SHARED_CLUSTER, "kuberay-backend-jobs-api-secret").state == JobState.SUCCEEDED
        )
        kuberay.emulator.store.delete("pods", "default", "kuberay-backend-jobs-api-secret-submitter")
        before = _secret_reads(kuberay)
        logs = backend.job_logs(SHARED_CLUSTER, "kuberay-backend-jobs-api-secret")
        assert "with the static token" in logs
        assert _secret_reads(kuberay) == before + 1
        # a wait reads it from Ray's log tail, followed once: the same text
        followed = backend.job_log_since(SHARED_CLUSTER, "kuberay-backend-jobs-api-secret", 0, complete_lines=False)
        assert followed == (logs, len(logs.encode()))
    finally:
        current = kuberay.emulator.store.get("rayclusters", "default", SHARED_CLUSTER)
        current["spec"]["authOptions"] = shared["spec"]["authOptions"]
        kuberay.emulator.store.update("rayclusters", "default", SHARED_CLUSTER, current, status=False)
        kuberay.emulator.store.delete("secrets", "default", SHARED_CLUSTER)
    with pytest.raises(BackendError, match="'ray_auth' must be one of"):
        KubeRayBackend(kuberay.connection, ray_auth="anyone")


def _secret_reads(kuberay) -> int:
    return sum(count for key, count in kuberay.emulator.requests.items() if key.split(" ")[1:2] == ["secrets"])


def test_kubernetes_token_auth_refuses_a_ray_that_cannot_check_kubernetes_tokens(kuberay):
    """``ray_auth: kubernetes`` needs Ray >= 2.55 on every token-auth cluster: refused at task start,
    naming the field, before anything is created; ``ray_auth: secret`` takes Ray 2.52 as before."""
    from airflow_ray_platform.spec.models import JobConfigurationError, load_job_configuration

    config = load_job_configuration(
        {
            "name": "old-ray",
            "owner": "data-science",
            "team": "forecasting",
            "cluster": {"ray_version": "2.53.0", "head": {"cpu": "1", "memory": "1Gi"}},
            "job": {"entrypoint": "true"},
        }
    )
    before = dict(kuberay.emulator.requests)
    with pytest.raises(JobConfigurationError, match=r"cluster\.ray_version: 2\.53\.0 cannot check Kubernetes tokens"):
        KubeRayBackend(kuberay.connection).validate_configuration(config)
    KubeRayBackend(kuberay.connection, ray_auth="secret").validate_configuration(config)
    assert not [key for key, count in kuberay.emulator.requests.items() if count > before.get(key, 0)]


def test_a_dashboard_template_beyond_this_machine_must_be_https():
    """Found by review: with ``ray_auth: kubernetes`` the worker's Kubernetes token went to every head over
    plain http when the template said http. Refused before any connection is read, unless allow_http."""
    plain = "http://{name}-head-svc.{namespace}.svc.cluster.local:8265"
    with pytest.raises(BackendError, match=r"dashboard_url_template': http://cluster-head-svc.* is not https"):
        KubeRayBackend("no_such_connection", dashboard_url_template=plain)
    with pytest.raises(BackendError, match="allow_http: true"):
        KubeRayBackend("no_such_connection", dashboard_url_template=plain, allow_http=False)
