"""Delete idle Ray clusters, shipped with airflow-ray-platform: one task per backend connection.

Every 10 minutes, each backend's managed clusters are swept: deleted when idle past their
``idle_timeout``, past their ``max_lifetime``, or ephemeral with their job ended; never with an active
job, a lease of a running DAG run, labelled keep, or unmanaged; but past the platform policy's hard
``max_lifetime`` a cluster's jobs are stopped and it is deleted. Leases of runs that have ended are
ignored and released. The delete is a compare-and-delete (a job that arrives meanwhile keeps
its cluster). Every decision goes to the lifecycle state store; the task log ends with a table of the
decisions and the resources freed. First, each sweep stops (and records STOPPED) any active Ray job whose
task instance has ended without it (marked failed before a triggerer ran its trigger). ``dry_run``
decides and records without deleting or stopping. The connections swept and the state store come from
Airflow's configuration (``[ray_platform] cleanup_ray_conn_ids``, ``state_store_conn_id``), never from a
run's params: this DAG acts as the platform's garbage collector (under a policy, only from a bundle the
policy's ``cleanup.bundles`` names).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="ray_cleanup_idle_clusters",
    description="Garbage-collect idle Ray clusters managed by airflow-ray-platform",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ray", "maintenance"],
    params={"dry_run": Param(False, type="boolean")},
) as dag:

    @task
    def backends() -> list[str]:
        from airflow_ray_platform import settings

        return settings.cleanup_ray_conn_ids()

    @task
    def sweep_backend(ray_conn_id: str, params=None, run_id=None, ti=None) -> dict:
        from airflow_ray_platform import settings
        from airflow_ray_platform.hooks.ray import RayHook
        from airflow_ray_platform.maintenance.abandoned_jobs import task_state_lookup
        from airflow_ray_platform.maintenance.garbage_collection import report, sweep
        from airflow_ray_platform.maintenance.leases import DagRunLiveness
        from airflow_ray_platform.records.lifecycle import LifecycleRecorder

        recorder = LifecycleRecorder(settings.state_store_conn_id())
        done = sweep(
            RayHook(ray_conn_id, recorder=recorder).backend,  # acts as the cleanup DAG
            recorder,
            task_state=task_state_lookup(ti),
            lease_is_live=DagRunLiveness.from_task_instance(ti),
            dry_run=bool(params["dry_run"]),
            sweep_id=f"{run_id}/{ray_conn_id}",
        )
        print(report(done))
        return {outcome.decision.cluster.name: outcome.action for outcome in done.outcomes}

    sweep_backend.expand(ray_conn_id=backends())
