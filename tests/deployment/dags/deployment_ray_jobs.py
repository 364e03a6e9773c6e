"""Ray jobs on an existing cluster, for the deployment tests' failure scenarios (entrypoint from conf)."""

from __future__ import annotations

from datetime import timedelta

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
