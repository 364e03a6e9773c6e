"""``airflow-ray`` as its user waits for it, each beside a baseline in the same run:

* ``submit``: the same ten-second job, on the same existing cluster, the same 1 s poll, alternating
  rounds, against the operator as Airflow times a task under ``dag.test()`` (its task instance's start to
  end). The CLI is timed as its user waits for it: the console script started as a process until it
  exits (interpreter, imports, state store, submit, wait, records).
* ``clusters list`` and ``status <submission id>`` on the local backend, against Ray's own CLI asking
  the same cluster the nearest question (``ray job list`` and ``ray job status``), and the bare interpreter.
"""

from __future__ import annotations

import json
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


def timed_command(*command: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """(seconds until the command exited, its stdout)."""
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, done.stdout


def cli_run(config: Path) -> tuple[float, str]:
    """(seconds, the job's submission id)."""
    seconds, out = timed_command(
        CLI, "submit", str(config), "--run-id", f"bench__{uuid.uuid4().hex}", "--poll-interval", "1", "--json"
    )
    return seconds, json.loads(out)["submission_id"]


def quick_commands(submission_id: str, dashboard_url: str, token: str) -> dict[str, float]:
    """One round of the quick commands and their baselines."""
    ray_env = {**os.environ, "RAY_ADDRESS": dashboard_url, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = str(Path(sys.executable).parent / "ray")
    return {
        "clusters_list": timed_command(CLI, "clusters", "list", "--json")[0],
        "status": timed_command(CLI, "status", submission_id, "--json")[0],
        "ray_job_list": timed_command(ray, "job", "list", env=ray_env)[0],
        "ray_job_status": timed_command(ray, "job", "status", submission_id, env=ray_env)[0],
        "python_startup": timed_command(sys.executable, "-c", "pass")[0],
    }


def main() -> None:
    from bench.dags.bench_dags import bench_cli_operator

    migrate_airflow_db()
    config = WORK / "cli-bench.yaml"
    config.write_text(yaml.safe_dump(TEN_SECONDS))
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    info = backend.describe_cluster(BENCH_CLUSTER)
    token = backend.registry.read_token(BENCH_CLUSTER)
    try:
        operator_run(bench_cli_operator)  # warm-up: the first job on a fresh cluster starts its workers
        cli, operator, quick = [], [], []
        for _ in range(ROUNDS):
            seconds, submission_id = cli_run(config)
            cli.append(seconds)
            operator.append(operator_run(bench_cli_operator))
            quick.append(quick_commands(submission_id, info.dashboard_url, token))
    finally:
        backend.delete_cluster(BENCH_CLUSTER)

    def quick_median(name: str) -> float:
        return round(median([sample[name] for sample in quick]), 2)

    record(
        "cli_overhead",
        {
            "rounds": ROUNDS,
            "job_s": 10,
            "cli_submit_s": round(median(cli), 2),
            "operator_task_s": round(median(operator), 2),
            "cli_over_operator": round(median(cli) / median(operator), 3),
            "clusters_list_s": quick_median("clusters_list"),
            "status_s": quick_median("status"),
            "ray_job_list_s": quick_median("ray_job_list"),
            "ray_job_status_s": quick_median("ray_job_status"),
            "python_startup_s": quick_median("python_startup"),
            "targets": "submit <= 1.10x the operator's own time for the same job on the same cluster; "
            "clusters list <= 1.0 s and status <= 1.0 s on the local backend",
        },
    )


if __name__ == "__main__":
    main()
