"""``airflow-ray submit`` against the operator: the same ten-second job, on the same existing cluster,
the same 1 s poll, alternating rounds. The CLI is timed as its user waits for it (the console script
started as a process until it exits: interpreter, imports, state store, submit, wait, records); the
operator as Airflow times a task under ``dag.test()`` (its task instance's start to end).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench import WORK
from bench.common import median, migrate_airflow_db, record
from bench.control_plane import operator_run
from bench.dags.bench_dags import BENCH_CLUSTER, TEN_SECONDS

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CLI = str(Path(sys.executable).parent / "airflow-ray")


def cli_run(config: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [CLI, "submit", str(config), "--run-id", f"bench__{uuid.uuid4().hex}", "--poll-interval", "1"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    from bench.dags.bench_dags import bench_cli_operator

    migrate_airflow_db()
    config = WORK / "cli-bench.yaml"
    config.write_text(yaml.safe_dump(TEN_SECONDS))
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    try:
        operator_run(bench_cli_operator)  # warm-up: the first job on a fresh cluster starts its workers
        cli, operator = [], []
        for _ in range(ROUNDS):
            cli.append(cli_run(config))
            operator.append(operator_run(bench_cli_operator))
    finally:
        backend.delete_cluster(BENCH_CLUSTER)
    record(
        "cli_overhead",
        {
            "rounds": ROUNDS,
            "job_s": 10,
            "cli_submit_s": round(median(cli), 2),
            "operator_task_s": round(median(operator), 2),
            "cli_over_operator": round(median(cli) / median(operator), 3),
            "target": "airflow-ray submit <= 1.10x the operator's own time for the same job on the same cluster",
        },
    )


if __name__ == "__main__":
    main()
