"""Control-plane overhead: RayJobOperator submit -> SUCCEEDED for a trivial job on an existing cluster,
against Ray's own JobSubmissionClient submit + poll loop, same cluster, same 0.2 s poll interval,
alternating rounds. The operator is timed as Airflow times a task (the task instance's start to end).
"""

from __future__ import annotations

import os
import time

from ray.job_submission import JobStatus, JobSubmissionClient

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench.common import median, migrate_airflow_db, record
from bench.dags.bench_dags import BENCH_CLUSTER, TRIVIAL

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def raw_loop(dashboard_url: str, token: str) -> float:
    started = time.perf_counter()
    client = JobSubmissionClient(dashboard_url, headers={"Authorization": f"Bearer {token}"})
    submission_id = client.submit_job(entrypoint=TRIVIAL["job"]["entrypoint"])
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.2)
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED
    return time.perf_counter() - started


def operator_run(dag) -> float:
    run = dag.test()
    ti = run.get_task_instance("job")
    assert ti.state == "success", ti.state
    return (ti.end_date - ti.start_date).total_seconds()


def main() -> None:
    from bench.dags.bench_dags import bench_control_plane_blocking, bench_control_plane_deferrable

    migrate_airflow_db()
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    info = wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    token = backend.registry.read_token(BENCH_CLUSTER)
    try:
        raw_loop(info.dashboard_url, token)  # warm-up: first job on a fresh cluster starts workers
        raw, blocking, deferrable = [], [], []
        for _ in range(ROUNDS):
            raw.append(raw_loop(info.dashboard_url, token))
            blocking.append(operator_run(bench_control_plane_blocking))
            deferrable.append(operator_run(bench_control_plane_deferrable))
    finally:
        backend.delete_cluster(BENCH_CLUSTER)
    record(
        "control_plane_overhead",
        {
            "rounds": ROUNDS,
            "raw_job_submission_client_s": round(median(raw), 3),
            "ray_job_operator_blocking_s": round(median(blocking), 3),
            "ray_job_operator_deferrable_s": round(median(deferrable), 3),
            "ratio_blocking": round(median(blocking) / median(raw), 3),
            "ratio_deferrable": round(median(deferrable) / median(raw), 3),
            "target": "ratio <= 1.2",
            "samples": {
                "raw": [round(x, 3) for x in raw],
                "blocking": [round(x, 3) for x in blocking],
                "deferrable": [round(x, 3) for x in deferrable],
            },
        },
    )


if __name__ == "__main__":
    main()
