"""Opt-in: the kuberay backend against a real Kubernetes cluster with the KubeRay operator (>= 1.7).

Run with ``pytest -m kubernetes tests/kubernetes_real`` and ``KUBECONFIG`` pointing at the cluster
(``scripts/kind-kuberay.sh`` makes one with kind and helm, binds the provider's Role from
``deploy/kuberay-rbac.yaml`` and runs these tests as that Role's ServiceAccount). Pods pull
``rayproject/ray`` images, so the first run takes minutes. These machines have no container engine
and no API server: here the tests are deselected (``make test`` runs ``-m "not kubernetes"``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest
from airflow.utils.state import DagRunState

from airflow_ray_platform.backends.base import ClusterState, JobState
from airflow_ray_platform.backends.kuberay.backend import KubeRayBackend
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.spec.naming import cluster_labels
from airflow_ray_platform.triggers.ray import RayJobTrigger

from ..test_dags import ray_e2e_dags as dags

pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG pointing at a cluster with KubeRay"),
]
NAMESPACE = os.environ.get("ARP_K8S_NAMESPACE", "default")
STARTUP_TIMEOUT = float(os.environ.get("ARP_K8S_STARTUP_TIMEOUT", "900"))  # first image pull included
#: ``ray_auth`` of the connection: ``kubernetes`` (KubeRay >= 1.7, Ray >= 2.55) or ``secret`` (older pairs).
AUTH = {"ray_auth": os.environ.get("ARP_K8S_RAY_AUTH", "kubernetes")}
SMALL = ClusterSpec(head={"cpu": "1", "memory": "2Gi", "object_store_memory": "200Mi"})


@pytest.fixture(scope="module", autouse=True)
def real_connections():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "AIRFLOW_CONN_KUBERNETES_REAL",
            json.dumps(
                {
                    "conn_type": "kubernetes",
                    "extra": {"kube_config_path": os.environ["KUBECONFIG"], "namespace": NAMESPACE},
                }
            ),
        )
        patch.setenv(
            "AIRFLOW_CONN_RAY_DEFAULT",
            json.dumps(
                {"conn_type": "ray", "extra": {"backend": "kuberay", "kubernetes_conn_id": "kubernetes_real", **AUTH}}
            ),
        )
        yield


@pytest.fixture
def cluster_name():
    name = f"arp-real-{uuid.uuid4().hex[:6]}"
    yield name
    KubeRayBackend("kubernetes_real", **AUTH).delete_cluster(name)


def test_cluster_job_logs_stop_and_delete(cluster_name):
    backend = KubeRayBackend("kubernetes_real", **AUTH)
    labels = cluster_labels(owner="tests", team="platform", idle_timeout_seconds=600, max_lifetime_seconds=3600)
    backend.create_or_get_cluster(cluster_name, SMALL, labels)
    ready = wait_for_cluster(RayHook().backend, cluster_name, timeout=STARTUP_TIMEOUT, poll_interval=5)
    assert ready.state == ClusterState.READY
    job = JobSpec(entrypoint="python -c \"import ray; ray.init(); print('CPUs', ray.cluster_resources()['CPU'])\"")
    backend.submit_job(cluster_name, f"{cluster_name}-ok", job, {"team": "platform"})
    trigger = RayJobTrigger(ray_conn_id="ray_default", cluster_name=cluster_name, submission_id=f"{cluster_name}-ok")

    async def wait():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(wait(), STARTUP_TIMEOUT))
    assert event["status"] == "success", event
    assert "CPUs" in backend.job_logs(cluster_name, f"{cluster_name}-ok")
    backend.submit_job(cluster_name, f"{cluster_name}-long", JobSpec(entrypoint="sleep 600"), {})
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while backend.describe_job(cluster_name, f"{cluster_name}-long").state != JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(2)
    assert backend.stop_job(cluster_name, f"{cluster_name}-long")
    assert backend.describe_job(cluster_name, f"{cluster_name}-long") is None
    assert backend.delete_cluster(cluster_name)
    assert backend.describe_cluster(cluster_name) is None


@pytest.mark.usefixtures("airflow_db")
def test_ephemeral_cluster_dag_runs_and_cleans_up():
    run = dags.ray_job_ephemeral.test(run_conf={"entrypoint": "python -c \"print('hello from kubernetes')\""})
    assert run.state == DagRunState.SUCCESS
    name = run.get_task_instance("job").xcom_pull(task_ids="job", key="cluster_name")
    assert KubeRayBackend("kubernetes_real", **AUTH).describe_cluster(name) is None
