"""One real Airflow deployment for the module's tests (starting one costs about a minute)."""

from __future__ import annotations

import os

import pytest

from .harness import Deployment, start_deployment


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Deployment:
    admin_url = os.environ.get("ARP_TEST_POSTGRES_URL")
    if not admin_url:
        # LocalExecutor runs tasks in parallel processes, which Airflow does not allow on SQLite.
        pytest.skip("ARP_TEST_POSTGRES_URL is not set: the deployment tests need a PostgreSQL server")
    yield from start_deployment(tmp_path_factory.mktemp("deployment"), admin_url)
