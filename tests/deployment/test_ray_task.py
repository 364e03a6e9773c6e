"""A Ray step added to an ordinary pipeline, under the real scheduler, triggerer and dag-processor: a
backfill over several dates, each date's value reaching the next task, a worker SIGKILLed mid-job once,
one Ray job per task and date, and the Ray step's outlet scheduling the DAG that consumes its asset."""

from __future__ import annotations

import signal
from datetime import date, timedelta

import psutil

from airflow_ray_platform.spec.naming import DAG_ID_METADATA, RUN_ID_METADATA

from .conftest import CLUSTER
from .harness import Deployment

DAG_ID = "pipeline_with_ray_step"
CONSUMER = "zone_scores_consumer"
ZONES = ("north", "south", "east", "west")


def _jobs(deployment: Deployment) -> list:
    return [job for job in deployment.backend.list_jobs(CLUSTER) if job.metadata.get(DAG_ID_METADATA) == DAG_ID]


def _running_job(deployment: Deployment):
    return next((job for job in _jobs(deployment) if job.state == "RUNNING"), None)


def _value(deployment: Deployment, run_id: str, task_id: str):
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    return deployment.api.get(path, stringify=False)["value"]


def test_a_backfilled_pipeline_with_a_ray_step_survives_a_killed_worker(deployment: Deployment, cluster: str):
    api = deployment.api
    for dag_id in (DAG_ID, CONSUMER):
        api.unpause(dag_id)
    api.backfill(DAG_ID, "2026-02-01T00:00:00Z", "2026-02-03T12:00:00Z", conf={}, max_active_runs=3)

    # One worker is killed while its Ray job runs; its retry reattaches to that job.
    job = api.wait("a Ray step to run", lambda: _running_job(deployment), timeout=300, interval=0.5)
    killed_run = job.metadata[RUN_ID_METADATA]
    ti = api.wait(
        "the Ray step's task process",
        lambda: (ti := api.task_instances(DAG_ID, killed_run)["score_zones"]).get("pid") and ti,
        timeout=60,
        interval=0.5,
    )
    task_process = psutil.Process(ti["pid"])
    assert task_process in psutil.Process(deployment.processes["airflow-scheduler"].pid).children(recursive=True)
    task_process.send_signal(signal.SIGKILL)

    def finished():
        runs = [run for run in api.runs(DAG_ID) if run["run_type"] == "backfill"]
        return runs if len(runs) == 3 and all(run["state"] in ("success", "failed") for run in runs) else None

    runs = api.wait("the backfill to finish", finished, timeout=600, interval=3)
    assert {run["dag_run_id"]: run["state"] for run in runs} == {run["dag_run_id"]: "success" for run in runs}
    for run in runs:
        ds = run["logical_date"][:10]
        scores = {f"{ds}/{zone}": len(f"{ds}/{zone}") for zone in ZONES}
        assert _value(deployment, run["dag_run_id"], "score_zones") == scores  # each date's own value
        assert _value(deployment, run["dag_run_id"], "check") == len(ZONES)
    assert {date.fromisoformat(run["logical_date"][:10]) for run in runs} == {
        date(2026, 2, 1) + timedelta(days=day) for day in range(3)
    }
    tries = {
        run["dag_run_id"]: api.task_instances(DAG_ID, run["dag_run_id"])["score_zones"]["try_number"] for run in runs
    }
    assert tries[killed_run] == 2 and sorted(tries.values()) == [1, 1, 2]
    jobs = _jobs(deployment)
    assert sorted(job.metadata[RUN_ID_METADATA] for job in jobs) == sorted(tries)  # one Ray job per task and date
    assert {job.state for job in jobs} == {"SUCCEEDED"}

    # The Ray step's outlet: its asset events schedule the consumer.
    consumer = api.wait(
        "the asset-scheduled DAG to run",
        lambda: [run for run in api.runs(CONSUMER) if run["state"] == "success"] or None,
        timeout=300,
        interval=3,
    )
    assert consumer[0]["run_type"] == "asset_triggered"
