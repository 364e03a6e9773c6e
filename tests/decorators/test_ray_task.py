"""``@task.ray`` end to end: real Airflow (dag.test) against real Ray, on the local and the emulated KubeRay
backend; the result reaches the next task, a retry reattaches, a failure carries the driver's traceback."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from airflow.sdk import task
from airflow.utils.state import DagRunState, TaskInstanceState

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.decorators.ray import RayDecoratedOperator
from airflow_ray_platform.records.state_store import StateStore, jobs
from airflow_ray_platform.spec.naming import TaskIdentity

from ..conftest import SHARED_CLUSTER
from ..helpers import dag_test_in_subprocess, jobs_of, recorded_job, task_state, wait_for_running_job
from ..test_dags import ray_task_dags as dags
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster")


def test_task_ray_is_registered_through_the_provider():
    decorated = task.ray(dags.split, task_id="registered", job_configuration=dags.ON_SHARED)
    assert decorated.operator_class is RayDecoratedOperator


@pytest.mark.parametrize("dag", [dags.ray_task_blocking, dags.ray_task_deferrable], ids=["blocking", "deferrable"])
def test_the_functions_value_reaches_the_next_task(dag, each_backend):
    run = dag.test()
    assert run.state == DagRunState.SUCCESS, [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    (job,) = jobs_of(each_backend, run, dag.dag_id)
    assert job.state == JobState.SUCCEEDED
    ti = run.get_task_instance("job")
    # ``ds`` is taken by name from the context, as plain text
    expected = {"scores": {"north": 5.0, "south": 5.0, "east": 4.0}, "ds": run.logical_date.strftime("%Y-%m-%d")}
    assert ti.xcom_pull(task_ids="job") == expected
    assert ti.xcom_pull(task_ids="job", key="submission_id") == job.submission_id
    assert ti.xcom_pull(task_ids="check") == "checked"
    # kept with the job's record, for a retry that reattaches and for the Ray view
    assert recorded_job(job.submission_id)["result"] == {"value": expected}


def test_multiple_outputs_failure_and_pickled_arguments(backend, capfd):
    run = dags.ray_task_shapes.test()
    ti = run.get_task_instance("split")
    assert ti.state == TaskInstanceState.SUCCESS
    assert ti.xcom_pull(task_ids="split", key="sum") == 5
    assert ti.xcom_pull(task_ids="split", key="product") == 6
    assert run.get_task_instance("pickled").xcom_pull(task_ids="pickled") == {"year": 2026, "values": [1, 2, 3]}
    assert task_state(run, "fails") == TaskInstanceState.FAILED
    (failed,) = jobs_of(backend, run, "ray_task_shapes", "fails")
    assert failed.state == JobState.FAILED
    out = capfd.readouterr().out
    assert f"Ray job '{failed.submission_id}' FAILED" in out
    # the driver's own traceback, with the function's frame and source line, in the task's failure
    assert 'File "<@task.ray fails>", line 3, in fails' in out
    assert 'raise ValueError(f"zone {zone} diverged")' in out
    assert "ValueError: zone 17 diverged" in out


def test_a_worker_killed_mid_job_reattaches_and_gets_the_value(backend, tmp_path):
    logical_date = datetime(2026, 4, 1, tzinfo=UTC)
    run_id = f"manual__{logical_date.isoformat()}"
    log_path = tmp_path / "worker.log"
    worker = dag_test_in_subprocess("ray_task_slow", logical_date, None, log_path, module="ray_task_dags")
    try:
        running = wait_for_running_job(backend, "ray_task_slow", run_id, log_path)
    finally:
        worker.kill()
        worker.wait()
    run = dags.ray_task_slow.test(logical_date=logical_date, run_after=logical_date)
    assert run.state == DagRunState.SUCCESS
    jobs = jobs_of(backend, run, "ray_task_slow")
    assert [j.submission_id for j in jobs] == [running.submission_id]  # one Ray job in all
    assert run.get_task_instance("job").xcom_pull(task_ids="job") == "finished once"


def test_killing_the_task_stops_its_job(backend, tmp_path):
    """SIGTERM to the task process runs on_kill, which stops the function's Ray job."""
    logical_date = datetime(2026, 4, 2, tzinfo=UTC)
    run_id = f"manual__{logical_date.isoformat()}"
    log_path = tmp_path / "worker.log"
    worker = dag_test_in_subprocess("ray_task_endless", logical_date, None, log_path, module="ray_task_dags")
    try:
        running = wait_for_running_job(backend, "ray_task_endless", run_id, log_path)
        os.kill(worker.pid, signal.SIGTERM)
        wait_for(lambda: backend.describe_job(SHARED_CLUSTER, running.submission_id).state == JobState.STOPPED)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    assert recorded_job(running.submission_id)["state"] == "STOPPED"


def test_a_try_after_its_cluster_is_gone_reuses_the_recorded_result(local_backend, capfd):
    """The job succeeded and its own cluster was deleted; a later try of the same task instance (a worker
    that died before Airflow stored the value, a cleared task) gets the recorded value: no cluster is
    created and nothing runs again."""
    logical_date = datetime(2026, 4, 3, tzinfo=UTC)
    first = dags.ray_task_ephemeral.test(logical_date=logical_date, run_after=logical_date)
    assert first.state == DagRunState.SUCCESS
    identity = TaskIdentity("ray_task_ephemeral", "job", first.run_id)
    assert local_backend.describe_cluster(identity.ephemeral_cluster_name("e2e-task-own")) is None
    capfd.readouterr()
    again = dags.ray_task_ephemeral.test(logical_date=logical_date, run_after=logical_date)
    assert again.run_id == first.run_id and again.state == DagRunState.SUCCESS
    assert again.get_task_instance("job").xcom_pull(task_ids="job") == {"sum": 9, "product": 20}
    assert "already succeeded (recorded at" in capfd.readouterr().out  # the task ran, its job did not
    with StateStore.from_airflow_connection(None).engine.connect() as connection:
        started = connection.execute(
            sa.select(sa.func.count()).select_from(jobs).where(jobs.c.dag_id == "ray_task_ephemeral")
        ).scalar_one()
    assert started == 1  # one Ray job in all
