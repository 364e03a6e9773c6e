"""Per-zone training backfill on Ray: the main job of airflow-ray-platform.

create or lease the shared cluster (setup) -> one Ray job trains one ridge model per zone (one Ray task
each) -> release the cluster, deleting it if no other run holds it (teardown: also when training fails,
and the run then fails). Safe to backfill: concurrent runs share one cluster. Outputs:
``<output_dir>/<run>/zones/zone-NNNNN/{model.npz, metrics.json}`` and ``summary.json``. Runs on the
embedded local backend, whose jobs write only the folders its ``ray_default`` connection names in
``writable_paths`` (``make demo`` names ``demo-output``); point ``ray_default`` at KubeRay to run the
same DAG on Kubernetes (``output_dir`` then a path its pods share, or object storage).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import yaml
from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_ray_platform.operators.ray import RayClusterDeleteOperator, RayClusterOperator, RayJobOperator

TRAINING_CODE = Path(__file__).parent / "zone_training"
DEFAULT_OUTPUT = os.environ.get("ZONE_TRAINING_OUTPUT", str(Path.cwd() / "demo-output" / "zone_training"))

# Declarative, in YAML beside the job's code; only the code's location is filled in here.
JOB_CONFIGURATION = yaml.safe_load((TRAINING_CODE / "job_configuration.yaml").read_text())
JOB_CONFIGURATION["job"]["runtime_env"]["working_dir"] = str(TRAINING_CODE)

with DAG(
    dag_id="example_zone_training",
    description="Train one small model per geographic zone, one Ray task each",
    # Daily at 02:00 UTC; a backfill fills past days. No start_date, and run_immediately=timedelta(0):
    # unpausing waits for the next 02:00 instead of running the latest past one at once (Airflow 3.3
    # treats run_immediately=False like None: it runs the past one if within 10 % of the interval).
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=timedelta(0)),
    catchup=False,
    # Runs share the cluster "zone-training": each run leases it (create_cluster), and each run's
    # delete_cluster releases that lease and deletes the cluster only once no other running run holds
    # one, so a backfill starts it once and the last run (or the cleanup DAG) deletes it.
    max_active_runs=4,
    tags=["ray", "example"],
    params={
        "zones": Param(200, type="integer", minimum=1),
        "cpus_per_zone": Param(0.5, type="number", exclusiveMinimum=0),
        "output_dir": Param(DEFAULT_OUTPUT, type="string"),
    },
) as dag:
    cluster = RayClusterOperator(task_id="create_cluster", job_configuration=JOB_CONFIGURATION)
    train = RayJobOperator(
        task_id="train_zones",
        job_configuration=JOB_CONFIGURATION,
        cluster_name="{{ ti.xcom_pull(task_ids='create_cluster', key='cluster_name') }}",
    )
    delete = RayClusterDeleteOperator(
        task_id="delete_cluster",
        cluster_name="{{ ti.xcom_pull(task_ids='create_cluster', key='cluster_name') }}",
    )
    # Setup and teardown: the cluster is deleted whatever training did, and the run's state is
    # training's (a teardown never decides it), so a failed training fails the run.
    cluster >> train >> delete.as_teardown(setups=cluster)

if __name__ == "__main__":
    dag.test()
