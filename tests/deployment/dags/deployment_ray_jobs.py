"""Ray jobs on an existing cluster, for the deployment tests' failure scenarios (entrypoint from conf), and
a daily deferrable one to backfill (``bench/deferral_race.py``: no retry, so a resumed task that Airflow
fails shows as a failed run)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from airflow_ray_platform.operators.ray import RayJobOperator

CLUSTER = "deploy-shared"
CONFIGURATION = {
    "name": "deploy-jobs",
    "owner": "tests",
    "team": "platform",
    "cluster": {"name": CLUSTER},
    "job": {"entrypoint": "{{ params.entrypoint }}"},
}
PARAMS = {"entrypoint": Param("python -c 'print(1)'", type="string")}

for dag_id, deferrable in (("ray_job_deferred", True), ("ray_job_blocking", False)):
    with DAG(dag_id=dag_id, schedule=None, params=PARAMS):
        RayJobOperator(
            task_id="job",
            job_configuration=CONFIGURATION,
            deferrable=deferrable,
            poll_interval=1.0,
            retries=1,
            retry_delay=timedelta(seconds=1),
        )

with DAG(
    dag_id="ray_job_deferred_daily", schedule="@daily", start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS
):
    RayJobOperator(task_id="job", job_configuration=CONFIGURATION, deferrable=True, poll_interval=1.0, retries=0)
