"""One real Airflow deployment for the module's tests (starting one costs about a minute)."""

from __future__ import annotations

import os

import pytest

from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec

from .harness import Deployment, start_deployment

#: The existing cluster the deployment's Ray tasks run on.
CLUSTER = "deploy-shared"


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Deployment:
    admin_url = os.environ.get("ARP_TEST_POSTGRES_URL")
    if not admin_url:
        # LocalExecutor runs tasks in parallel processes, which Airflow does not allow on SQLite.
        pytest.skip("ARP_TEST_POSTGRES_URL is not set: the deployment tests need a PostgreSQL server")
    yield from start_deployment(tmp_path_factory.mktemp("deployment"), admin_url)


@pytest.fixture(scope="session")
def cluster(deployment: Deployment) -> str:
    backend = deployment.backend
    backend.create_or_get_cluster(
        CLUSTER, ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"}), {}
    )
    wait_for_cluster(backend, CLUSTER, timeout=180, poll_interval=0.5)
    yield CLUSTER
    backend.delete_cluster(CLUSTER)
