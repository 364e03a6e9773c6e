"""DAGs of three teams under a platform policy (tests/operators/test_tenancy_e2e.py): the policy maps
``tenancy_a_*`` to team-a, ``tenancy_b_*`` to team-b and ``tenancy_c_*`` to team-c; team-b's cluster
admits team-c."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.operators.ray import RayClusterDeleteOperator, RayClusterOperator, RayJobOperator

TEAM_B_CLUSTER = "tenancy-b"
SMALL_HEAD = {"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"}
PARAMS = {"entrypoint": "python -c 'print(1)'", "submission_id": ""}
START = datetime(2026, 1, 1)


def _config(team: str, **fields) -> dict:
    return {"name": "tenancy", "owner": "tests", "team": team, **fields}


def _on_team_b(team: str) -> dict:
    return _config(team, cluster={"name": TEAM_B_CLUSTER}, job={"entrypoint": "{{ params.entrypoint }}"})


def _job_dag(dag_id: str, config: dict, **task_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS) as dag:
        RayJobOperator(task_id="job", job_configuration=config, deferrable=False, poll_interval=0.5, **task_kwargs)
    return dag


def _delete_dag(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS) as dag:
        RayClusterDeleteOperator(task_id="delete", cluster_name=TEAM_B_CLUSTER, force=True)
    return dag


def _touch_job_dag(dag_id: str) -> DAG:
    """Tasks that reach for a job through the hook, as DAG code would: stop it, read its live log, read
    its persisted log."""
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS) as dag:

        @task
        def stop(params=None) -> bool:
            return RayHook().backend.stop_job(TEAM_B_CLUSTER, params["submission_id"])

        @task
        def live_log(params=None) -> str:
            return RayHook().backend.job_logs(TEAM_B_CLUSTER, params["submission_id"])

        @task
        def persisted_log(params=None) -> str:
            return RayHook().read_persisted_job_log(params["submission_id"])

        stop()
        live_log()
        persisted_log()
    return dag


with DAG("tenancy_b_cluster", schedule=None, start_date=START, params=PARAMS) as tenancy_b_cluster:
    RayClusterOperator(
        task_id="cluster",
        job_configuration=_config(
            "team-b", cluster={"name": TEAM_B_CLUSTER, "head": SMALL_HEAD, "admit_teams": ["team-c"]}
        ),
        deferrable=False,
        poll_interval=0.5,
    )

tenancy_b_job = _job_dag("tenancy_b_job", _on_team_b("team-b"), wait_for_completion=False)
tenancy_b_probe = _job_dag("tenancy_b_probe", _on_team_b("team-b"))
tenancy_b_touch_job = _touch_job_dag("tenancy_b_touch_job")
tenancy_a_use_b = _job_dag("tenancy_a_use_b", _on_team_b("team-a"))
tenancy_a_delete_b = _delete_dag("tenancy_a_delete_b")
tenancy_a_touch_job = _touch_job_dag("tenancy_a_touch_job")
tenancy_a_claims_b = _job_dag(
    "tenancy_a_claims_b", _config("team-b", cluster={"head": SMALL_HEAD}, job={"entrypoint": "true"})
)
tenancy_a_too_big = _job_dag(
    "tenancy_a_too_big",
    _config("team-a", cluster={"head": {"cpu": "64", "memory": "1Gi"}, "auth": "disabled"}, job={"entrypoint": "true"}),
)
tenancy_nobody = _job_dag("tenancy_nobody", _on_team_b("team-a"))
tenancy_c_on_b = _job_dag("tenancy_c_on_b", _on_team_b("team-c"))
tenancy_c_delete_b = _delete_dag("tenancy_c_delete_b")
tenancy_c_touch_job = _touch_job_dag("tenancy_c_touch_job")
# team-c's policy requires the sandbox: its own cluster, where none can be made, or with it turned off
_C_OWN = _config("team-c", cluster={"head": SMALL_HEAD}, job={"entrypoint": "true"})
tenancy_c_own_cluster = _job_dag("tenancy_c_own_cluster", _C_OWN)
tenancy_c_sandbox_off = _job_dag("tenancy_c_sandbox_off", _C_OWN, ray_conn_id="ray_sandbox_off")


def answer() -> int:
    return 42


# ``@task.ray`` on team-b's cluster: refused for team-a, admitted for team-c.
with DAG("tenancy_a_task_ray_on_b", schedule=None, start_date=START) as tenancy_a_task_ray_on_b:
    task.ray(answer, task_id="job", job_configuration=_config("team-a", cluster={"name": TEAM_B_CLUSTER}))()
with DAG("tenancy_c_task_ray_on_b", schedule=None, start_date=START) as tenancy_c_task_ray_on_b:
    task.ray(answer, task_id="job", job_configuration=_config("team-c", cluster={"name": TEAM_B_CLUSTER}))()
