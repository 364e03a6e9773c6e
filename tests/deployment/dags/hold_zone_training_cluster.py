"""A run that holds the example's shared cluster until the test releases it (a scheduled production
run beside a backfill): create-or-lease it, wait for the release file, then the same teardown."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import yaml
from airflow.sdk import DAG, task

from airflow_ray_platform.operators.ray import RayClusterDeleteOperator, RayClusterOperator

EXAMPLE_CONFIGURATION = Path(__file__).parents[3] / "dags" / "zone_training" / "job_configuration.yaml"
CLUSTER_ONLY = {key: value for key, value in yaml.safe_load(EXAMPLE_CONFIGURATION.read_text()).items() if key != "job"}

with DAG(dag_id="hold_zone_training_cluster", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    create = RayClusterOperator(task_id="create_cluster", job_configuration=CLUSTER_ONLY)

    @task.sensor(poke_interval=2, timeout=1800, mode="poke")
    def until_released(dag_run=None) -> bool:
        return Path(dag_run.conf["release_file"]).exists()

    delete = RayClusterDeleteOperator(
        task_id="delete_cluster", cluster_name="{{ ti.xcom_pull(task_ids='create_cluster', key='cluster_name') }}"
    )
    create >> until_released() >> delete.as_teardown(setups=create)
