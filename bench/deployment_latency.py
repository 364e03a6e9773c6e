"""Latency under a real Airflow deployment (tests/deployment's harness: api-server, scheduler,
dag-processor, triggerer as processes, LocalExecutor, PostgreSQL): a job on an existing cluster through
RayJobOperator, blocking and deferrable (poll interval 1 s), against Ray's JobSubmissionClient polling
every 1 s in the same run, alternating rounds. Jobs sleep 9, 14, 19 and 29 s, so that they end about 10,
15, 20 and 30 s after their task started: the deferrable task defers after its first look, and its
trigger may not fire sooner than ``[ray_platform] deferral_settle_seconds`` after the deferral (the
shipped default), which is what binds for a job ending 10-20 s in.

Per run: detection lag (Ray's job end -> the task instance's end; the raw loop: job end -> the poll
that sees it) and the task instance's start -> end. ``dag.test()`` figures (bench/control_plane.py)
leave out the scheduler, the executor's task processes and the triggerer; these do not.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from ray.job_submission import JobStatus, JobSubmissionClient

from airflow_ray_platform import settings
from airflow_ray_platform.spec.naming import RUN_ID_METADATA
from bench.common import deployment_with_cluster, median, record
from tests.deployment.harness import Deployment

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SLEEPS = [int(s) for s in os.environ.get("BENCH_DEPLOY_SLEEPS", "9,14,19,29").split(",")]
POLL_INTERVAL = 1.0  # the deployment test DAGs' poll_interval
CLUSTER = "deploy-shared"
JOB = "python -c 'import time; time.sleep({seconds})'"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def raw_loop(client: JobSubmissionClient, seconds: int) -> dict[str, float]:
    started = time.time()
    submission_id = client.submit_job(entrypoint=JOB.format(seconds=seconds))
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(POLL_INTERVAL)
    seen = time.time()
    info = client.get_job_info(submission_id)
    assert info.status == JobStatus.SUCCEEDED
    return {"lag": seen - info.end_time / 1000, "total": seen - started}


def operator_run(deployment: Deployment, dag_id: str, seconds: int) -> dict[str, float]:
    api = deployment.api
    run = api.trigger(dag_id, {"entrypoint": JOB.format(seconds=seconds)})
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
    ti_start = _time(ti["start_date"])
    return {
        "lag": (ti_end - job.end_time.astimezone(UTC)).total_seconds(),
        "ti_start_to_end": (ti_end - ti_start).total_seconds(),
        "job_end_after_ti_start": (job.end_time.astimezone(UTC) - ti_start).total_seconds(),
    }


def main() -> None:
    with deployment_with_cluster("arp-bench-deploy-", CLUSTER) as (deployment, info):
        token = deployment.backend.registry.read_token(CLUSTER)
        client = JobSubmissionClient(info.dashboard_url, headers={"Authorization": f"Bearer {token}"})
        for dag_id in ("ray_job_deferred", "ray_job_blocking"):
            deployment.api.unpause(dag_id)
        raw_loop(client, 1)  # warm-up: the first job on a fresh cluster starts its workers
        operator_run(deployment, "ray_job_blocking", 1)
        samples: dict[int, dict[str, list]] = {}
        for seconds in SLEEPS:
            runs = samples[seconds] = {"raw": [raw_loop(client, seconds)], "blocking": [], "deferrable": []}
            for _ in range(ROUNDS):
                runs["blocking"].append(operator_run(deployment, "ray_job_blocking", seconds))
                runs["deferrable"].append(operator_run(deployment, "ray_job_deferred", seconds))

    def med(samples: list[dict[str, float]], key: str) -> float:
        return round(median([sample[key] for sample in samples]), 3)

    def case(seconds: int) -> dict:
        runs = samples[seconds]
        blocking, deferrable = med(runs["blocking"], "lag"), med(runs["deferrable"], "lag")
        return {
            "job_sleep_s": seconds,
            "job_end_after_ti_start_s": med(runs["deferrable"], "job_end_after_ti_start"),
            "raw_detection_lag_s": med(runs["raw"], "lag"),
            "blocking_detection_lag_s": blocking,
            "deferrable_detection_lag_s": deferrable,
            "deferrable_minus_blocking_lag_s": round(deferrable - blocking, 3),
            "worst_deferrable_minus_blocking_lag_s": round(
                max(sample["lag"] for sample in runs["deferrable"]) - blocking, 3
            ),
            "blocking_ti_start_to_end_s": med(runs["blocking"], "ti_start_to_end"),
            "deferrable_ti_start_to_end_s": med(runs["deferrable"], "ti_start_to_end"),
            "samples": runs,
        }

    record(
        "deployment_latency",
        {
            "runner": "tests/deployment harness: api-server, scheduler, dag-processor, triggerer processes; "
            "LocalExecutor; PostgreSQL",
            "rounds": ROUNDS,
            "poll_interval_s": POLL_INTERVAL,
            "deferral_hold_s": float(settings.OPTIONS["deferral_settle_seconds"]["default"]),
            "target": "deferrable detection lag <= blocking + 2 s, for jobs ending 10-20 s in and at 30 s",
            "cases": [case(seconds) for seconds in SLEEPS],
        },
    )


if __name__ == "__main__":
    main()
