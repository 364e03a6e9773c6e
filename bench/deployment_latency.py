"""Latency under a real Airflow deployment (tests/deployment's harness: api-server, scheduler,
dag-processor, triggerer as processes, LocalExecutor, PostgreSQL): a trivial job on an existing cluster
through RayJobOperator, blocking and deferrable (poll interval 1 s), against Ray's JobSubmissionClient
polling every 1 s in the same run, alternating rounds. The job sleeps 15 s: longer than the 10 s a
deferrable operator waits in its task before deferring, so the deferred path is what is measured.

Per run: detection lag (Ray's job end -> the task instance's end; the raw loop: job end -> the poll
that sees it) and the task instance's start -> end. ``dag.test()`` figures (bench/control_plane.py)
leave out the scheduler, the executor's task processes and the triggerer; these do not.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from airflow_ray_platform.spec.naming import RUN_ID_METADATA
from bench.common import median, record
from tests.deployment.harness import Deployment, start_deployment

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
POLL_INTERVAL = 1.0  # the deployment test DAGs' poll_interval
CLUSTER = "deploy-shared"
JOB = "python -c 'import time; time.sleep(15)'"
ADMIN_URL = os.environ.get("ARP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def raw_loop(client: JobSubmissionClient) -> dict[str, float]:
    started = time.time()
    submission_id = client.submit_job(entrypoint=JOB)
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(POLL_INTERVAL)
    seen = time.time()
    info = client.get_job_info(submission_id)
    assert info.status == JobStatus.SUCCEEDED
    return {"lag": seen - info.end_time / 1000, "total": seen - started}


def operator_run(deployment: Deployment, dag_id: str) -> dict[str, float]:
    api = deployment.api
    run = api.trigger(dag_id, {"entrypoint": JOB})
    api.wait(
        f"{dag_id} to end",
        lambda: api.get(f"/dags/{dag_id}/dagRuns/{run}")["state"] in ("success", "failed"),
        timeout=300,
        interval=0.5,
    )
    ti = api.task_instances(dag_id, run)["job"]
    assert ti["state"] == "success", ti
    (job,) = [j for j in deployment.backend.list_jobs(CLUSTER) if j.metadata.get(RUN_ID_METADATA) == run]
    ti_end = _time(ti["end_date"])
    return {
        "lag": (ti_end - job.end_time.astimezone(UTC)).total_seconds(),
        "ti_start_to_end": (ti_end - _time(ti["start_date"])).total_seconds(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="arp-bench-deploy-") as root:
        for deployment in start_deployment(Path(root), ADMIN_URL):
            backend = deployment.backend
            spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
            backend.create_or_get_cluster(CLUSTER, spec, {})
            info = wait_for_cluster(backend, CLUSTER, timeout=300, poll_interval=0.5)
            token = backend.registry.read_token(CLUSTER)
            client = JobSubmissionClient(info.dashboard_url, headers={"Authorization": f"Bearer {token}"})
            for dag_id in ("ray_job_deferred", "ray_job_blocking"):
                deployment.api.unpause(dag_id)
            raw_loop(client)  # warm-up: the first job on a fresh cluster starts its workers
            operator_run(deployment, "ray_job_blocking")
            raw, blocking, deferrable = [], [], []
            for _ in range(ROUNDS):
                raw.append(raw_loop(client))
                blocking.append(operator_run(deployment, "ray_job_blocking"))
                deferrable.append(operator_run(deployment, "ray_job_deferred"))
            backend.delete_cluster(CLUSTER)

    def med(samples: list[dict[str, float]], key: str) -> float:
        return round(median([sample[key] for sample in samples]), 3)

    record(
        "deployment_latency",
        {
            "runner": "tests/deployment harness: api-server, scheduler, dag-processor, triggerer processes; "
            "LocalExecutor; PostgreSQL",
            "rounds": ROUNDS,
            "poll_interval_s": POLL_INTERVAL,
            "raw_detection_lag_s": med(raw, "lag"),
            "blocking_detection_lag_s": med(blocking, "lag"),
            "deferrable_detection_lag_s": med(deferrable, "lag"),
            "deferrable_minus_blocking_lag_s": round(med(deferrable, "lag") - med(blocking, "lag"), 3),
            "target": "deferrable detection lag <= blocking + 2 s",
            "raw_submit_to_detect_s": med(raw, "total"),
            "blocking_ti_start_to_end_s": med(blocking, "ti_start_to_end"),
            "deferrable_ti_start_to_end_s": med(deferrable, "ti_start_to_end"),
            "samples": {
                "raw": raw,
                "blocking": blocking,
                "deferrable": deferrable,
            },
        },
    )


if __name__ == "__main__":
    main()
