"""Detection lag per backend: how late a task notices that its Ray job ended, against a raw client.

A 3 s job on one existing local cluster, through ``RayJobOperator`` blocking and deferrable (the
trigger run in-process by ``dag.test()``, deferring at once) on the local backend and on the dashboard
backend (a ``ray`` connection to the same cluster's dashboard), every poll at 1 s, against Ray's
``JobSubmissionClient`` polling every 1 s in the same run, alternating rounds. Lag: Ray's job end ->
the task instance's end (the raw loop: -> the poll that sees it). The dashboard backend used to wait
~5 s more for Ray's websocket log tail to close before it persisted a finished job's log.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import urlsplit

from ray.job_submission import JobStatus, JobSubmissionClient

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench.common import median, migrate_airflow_db, record
from bench.dags.bench_dags import BENCH_CLUSTER, THREE_SECONDS

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
POLL = 1.0


def raw_lag(client: JobSubmissionClient) -> float:
    submission_id = client.submit_job(entrypoint=THREE_SECONDS["job"]["entrypoint"])
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(POLL)
    seen = time.time()
    return seen - client.get_job_info(submission_id).end_time / 1000


def operator_lag(dag, backend: LocalBackend) -> float:
    run = dag.test()
    ti = run.get_task_instance("job")
    assert ti.state == "success", ti.state
    submission_id = ti.xcom_pull(task_ids="job", key="submission_id")
    ended = backend.describe_job(BENCH_CLUSTER, submission_id).end_time
    return (ti.end_date - ended).total_seconds()


def main() -> None:
    from bench.dags import bench_dags as dags

    migrate_airflow_db()
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    info = wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    token = backend.registry.read_token(BENCH_CLUSTER)
    address = urlsplit(info.dashboard_url)
    os.environ["AIRFLOW_CONN_RAY_DASHBOARD"] = json.dumps(
        {
            "conn_type": "ray",
            "host": address.hostname,
            "port": address.port,
            "password": token,
            "extra": {"cluster_name": BENCH_CLUSTER},
        }
    )
    client = JobSubmissionClient(info.dashboard_url, headers={"Authorization": f"Bearer {token}"})
    modes = ["local_blocking", "local_deferrable", "dashboard_blocking", "dashboard_deferrable"]
    samples: dict[str, list[float]] = {"raw": [], **{mode: [] for mode in modes}}
    try:
        raw_lag(client)  # warm-up: the first job on a fresh cluster starts workers
        for _ in range(ROUNDS):
            samples["raw"].append(raw_lag(client))
            for mode in modes:
                samples[mode].append(operator_lag(getattr(dags, f"bench_detection_{mode}"), backend))
    finally:
        backend.delete_cluster(BENCH_CLUSTER)
    raw = median(samples["raw"])
    record(
        "detection_lag",
        {
            "rounds": ROUNDS,
            "poll_interval_s": POLL,
            "raw_job_submission_client_lag_s": round(raw, 3),
            **{f"{mode}_lag_s": round(median(samples[mode]), 3) for mode in modes},
            **{f"{mode}_minus_raw_s": round(median(samples[mode]) - raw, 3) for mode in modes},
            "target": "dashboard backend <= raw + 0.5 s",
            "runner": "dag.test() (triggers in-process), one local cluster",
            "samples": {key: [round(value, 3) for value in values] for key, values in samples.items()},
        },
    )


if __name__ == "__main__":
    main()
