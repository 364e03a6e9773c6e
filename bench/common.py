"""Helpers shared by the benchmarks: timing, the Airflow DB, and the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_ray_platform.backends.base import ClusterInfo
    from tests.deployment.harness import Deployment

RESULTS = Path(__file__).parent / "results.json"


def migrate_airflow_db() -> None:
    from airflow.utils import db

    db.resetdb()


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def record(name: str, result: dict) -> None:
    """Merge one benchmark's result into results.json (the README quotes this file)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = {
        **result,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
    }
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps({name: results[name]}, indent=2))


@contextmanager
def deployment_with_cluster(prefix: str, cluster: str) -> Iterator[tuple[Deployment, ClusterInfo]]:
    """The tests' real Airflow deployment (on ``ARP_TEST_POSTGRES_URL``, else the local server) with an
    existing local cluster ``cluster`` ready, both gone at the end."""
    from airflow_ray_platform.runs.cluster import wait_for_cluster
    from airflow_ray_platform.spec.models import ClusterSpec
    from tests.deployment.harness import start_deployment

    admin_url = os.environ.get("ARP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        for deployment in start_deployment(Path(root), admin_url):
            backend = deployment.backend
            spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
            backend.create_or_get_cluster(cluster, spec, {})
            try:
                yield deployment, wait_for_cluster(backend, cluster, timeout=300, poll_interval=0.5)
            finally:
                backend.delete_cluster(cluster)
