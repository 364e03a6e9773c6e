"""Per-zone training backfill on Ray: the main job of airflow-ray-platform.

create or lease the shared cluster (setup) -> one Ray job trains one ridge model per zone (one Ray task
each) -> release the cluster, deleting it if no other run holds it (teardown: also when training fails,
and the run then fails). Safe to backfill: concurrent runs share one cluster. Outputs:
``<output_dir>/<run>/zones/zone-NNNNN/{model.npz, metrics.json}`` and ``summary.json``. Runs as is on
the embedded local backend (``ray_default`` absent); point the ``ray_default`` connection at KubeRay to
run the same DAG on Kubernetes.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param

from airflow_ray_platform.operators.ray import RayClusterDeleteOperator, RayClusterOperator, RayJobOperator

TRAINING_CODE = Path(__file__).parent / "zone_training"
DEFAULT_OUTPUT = os.environ.get("ZONE_TRAINING_OUTPUT", str(Path.cwd() / "demo-output" / "zone_training"))

JOB_CONFIGURATION = {
    "name": "zone-training",
    "owner": "data-science",
    "team": "forecasting",
    "cluster": {
        "head": {"cpu": "2", "memory": "3Gi", "object_store_memory": "300Mi"},
        "idle_timeout": 1800,
        "max_lifetime": 6 * 3600,
    },
    "job": {
        # Params reach the job as arguments the provider quotes for the shell, never as command text.
        "entrypoint": "python train_zones.py",
        "args": [
            "--zones",
            "{{ params.zones }}",
            "--cpus-per-zone",
            "{{ params.cpus_per_zone }}",
            "--output-dir",
            "{{ params.output_dir }}/{{ run_id | replace(':', '-') | replace('+', '-') }}",
        ],
        "runtime_env": {
            "working_dir": str(TRAINING_CODE),
            "env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        },
        "metadata": {"purpose": "zone-training-backfill"},
        "timeout": 3600,
    },
}

with DAG(
    dag_id="example_zone_training",
    description="Train one small model per geographic zone, one Ray task each",
    schedule=None,
    start_date=datetime(2026, 1, 1),
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
