"""RayJobSensor end to end: real Airflow (dag.test) against real Ray, in poke and deferrable mode."""

from __future__ import annotations

import pytest
from airflow.utils.state import DagRunState, TaskInstanceState

from airflow_ray_platform.backends.base import JobState

from ..helpers import jobs_of, task_state
from ..test_dags import ray_e2e_dags as dags

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster")


@pytest.mark.parametrize("dag", [dags.ray_job_sensor, dags.ray_job_sensor_poke], ids=["deferrable", "poke"])
def test_sensor_waits_for_the_job(dag, backend):
    run = dag.test(run_conf={"entrypoint": "python -c 'import time; time.sleep(2)'"})
    assert run.state == DagRunState.SUCCESS
    assert task_state(run, "wait") == TaskInstanceState.SUCCESS
    (job,) = jobs_of(backend, run, dag.dag_id)
    assert job.state == JobState.SUCCEEDED


@pytest.mark.parametrize("dag", [dags.ray_job_sensor, dags.ray_job_sensor_poke], ids=["deferrable", "poke"])
def test_sensor_fails_with_the_jobs_error(dag, capfd):
    run = dag.test(run_conf={"entrypoint": "python -c \"raise SystemExit('bad zone')\""})
    assert run.state == DagRunState.FAILED
    assert task_state(run, "wait") == TaskInstanceState.FAILED
    assert "bad zone" in capfd.readouterr().out
