"""DAGs the end-to-end tests run with dag.test(); entrypoints arrive through run_conf params."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_ray_platform.operators.ray import RayClusterOperator, RayJobOperator
from airflow_ray_platform.sensors.ray import RayJobSensor

SHARED = "shared"
OWNER = {"owner": "tests", "team": "platform"}
ON_SHARED = {
    "name": "e2e",
    **OWNER,
    "cluster": {"name": SHARED},
    "job": {"entrypoint": "{{ params.entrypoint }}"},
}
PARAMS = {"entrypoint": "python -c 'print(1)'"}
START = datetime(2026, 1, 1)


def _job_dag(dag_id: str, *, deferrable: bool, config: dict = ON_SHARED, **task_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS) as dag:
        RayJobOperator(task_id="job", job_configuration=config, deferrable=deferrable, poll_interval=0.5, **task_kwargs)
    return dag


ray_job_blocking = _job_dag("ray_job_blocking", deferrable=False)
ray_job_deferrable = _job_dag("ray_job_deferrable", deferrable=True)
ray_job_retry = _job_dag("ray_job_retry", deferrable=False, retries=1, retry_delay=timedelta(0))
ray_job_detached = _job_dag("ray_job_detached", deferrable=False, wait_for_completion=False)
ray_job_timeout = _job_dag("ray_job_timeout", deferrable=True, timeout=3)


def _of_its_own(name: str, job: dict | None = None) -> dict:
    """A configuration whose job gets a small cluster of its own (an ephemeral one)."""
    cluster = {"head": {"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"}}
    return {"name": name, **OWNER, "cluster": cluster, "job": job or {"entrypoint": "{{ params.entrypoint }}"}}


ray_job_ephemeral = _job_dag("ray_job_ephemeral", deferrable=True, config=_of_its_own("e2e-ephemeral"))
ray_job_ephemeral_unsubmittable = _job_dag(
    "ray_job_ephemeral_unsubmittable",
    deferrable=False,
    config=_of_its_own(
        "e2e-unsubmittable", {"entrypoint": "true", "runtime_env": {"working_dir": "/nonexistent/arp-working-dir"}}
    ),
)
ray_job_ephemeral_s3_logs = _job_dag(
    "ray_job_ephemeral_s3_logs",
    deferrable=False,
    log_storage_uri="s3://ray-logs/e2e",
    config=_of_its_own("e2e-s3-logs"),
)
ray_job_chaos = _job_dag(
    "ray_job_chaos",
    deferrable=False,
    config={
        "name": "chaos",
        **OWNER,
        "cluster": {
            "head": {"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"},
            "idle_timeout": 60,  # the shortest allowed: the test's sweep looks two minutes ahead
        },
        "job": {"entrypoint": "{{ params.entrypoint }}"},
    },
)
# Waits on the session's shared cluster through a dashboard connection (the test sets ray_restarting).
ray_job_dashboard_blocking = _job_dag(
    "ray_job_dashboard_blocking",
    deferrable=False,
    ray_conn_id="ray_restarting",
    config={**ON_SHARED, "cluster": {"name": "existing"}},
)
ray_job_dashboard_deferrable = _job_dag(
    "ray_job_dashboard_deferrable",
    deferrable=True,
    ray_conn_id="ray_restarting",
    config={**ON_SHARED, "cluster": {"name": "existing"}},
)
ray_job_unreachable_store = _job_dag(
    "ray_job_unreachable_store", deferrable=False, state_store_conn_id="arp_unreachable_store"
)
ray_job_bad_template = _job_dag(
    "ray_job_bad_template",
    deferrable=False,
    retries=2,
    retry_delay=timedelta(0),
    config={
        "name": "{{ params.entrypoint }}",
        **OWNER,
        "cluster": {"head": {"cpu": "1"}},
        "job": {"entrypoint": "true"},
    },
)

with DAG("ray_cluster_reuse", schedule=None, start_date=START, params=PARAMS) as ray_cluster_reuse:
    # Creating a cluster that already exists by name, with the spec it was created from (the session's
    # shared cluster: tests/conftest.py SHARED_SPEC), gets it; a second task runs on it by XCom.
    shared_spec = {"name": SHARED, "head": {"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"}}
    get_shared = RayClusterOperator(
        task_id="cluster", job_configuration={"name": "e2e", **OWNER, "cluster": shared_spec}
    )
    get_shared >> RayJobOperator(
        task_id="job",
        job_configuration=ON_SHARED,
        poll_interval=0.5,
        cluster_name="{{ ti.xcom_pull(task_ids='cluster', key='cluster_name') }}",
    )


def _sensor_dag(dag_id: str, *, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS) as dag:
        RayJobOperator(task_id="job", job_configuration=ON_SHARED, wait_for_completion=False) >> RayJobSensor(
            task_id="wait",
            cluster_name=SHARED,
            deferrable=deferrable,
            poke_interval=0.5,
            submission_id="{{ ti.xcom_pull(task_ids='job', key='submission_id') }}",
        )
    return dag


ray_job_sensor = _sensor_dag("ray_job_sensor", deferrable=True)
ray_job_sensor_poke = _sensor_dag("ray_job_sensor_poke", deferrable=False)
