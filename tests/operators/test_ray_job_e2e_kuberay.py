"""What is KubeRay's own, end to end: same DAGs, same operators, only the ``ray_default`` connection
changes (the tests shared by every backend run through ``each_backend`` in test_ray_job_e2e.py).
Kubernetes is the emulated API server; KubeRay is the simulated controller, which runs every RayJob on
a real local Ray cluster."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.records.state_store import StateStore, jobs

from ..conftest import SHARED_CLUSTER
from ..helpers import dag_test_in_subprocess, jobs_of, recorded_job, wait_for_running_job
from ..test_dags import ray_e2e_dags as dags
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster", "via_kuberay")


@pytest.fixture(scope="module")
def via_kuberay(kuberay):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_RAY_DEFAULT", kuberay.ray_connection())
        yield


@pytest.mark.parametrize("dag", [dags.ray_job_blocking, dags.ray_job_deferrable], ids=["blocking", "deferrable"])
def test_job_succeeds_as_a_rayjob_and_streams_the_submitter_log(dag, kuberay, capfd):
    run = dag.test(run_conf={"entrypoint": "python -c \"print('hello from', 'kuberay')\""})
    assert run.state == DagRunState.SUCCESS
    (job,) = jobs_of(kuberay.backend, run, dag.dag_id)
    assert job.state == JobState.SUCCEEDED
    ti = run.get_task_instance("job")
    assert ti.xcom_pull(task_ids="job", key="submission_id") == job.submission_id
    assert ti.xcom_pull(task_ids="job", key="backend") == "kuberay"
    rayjob = kuberay.emulator.store.get("rayjobs", "default", job.submission_id)
    assert rayjob["status"]["jobDeploymentStatus"] == "Complete"
    assert rayjob["metadata"]["labels"]["airflow-ray-platform.io/team"] == "platform"
    assert "hello from kuberay" in capfd.readouterr().out
    # The pods' metrics ports are not reachable through the Kubernetes API: nothing is measured.
    store = StateStore.from_airflow_connection(None)
    with store.engine.connect() as connection:
        (row,) = connection.execute(sa.select(jobs).where(jobs.c.submission_id == job.submission_id)).mappings()
    assert row["measured_cpu_utilisation"] is None and row["state"] == "SUCCEEDED"


def test_on_kill_deletes_the_rayjob_and_kuberay_stops_the_ray_job(kuberay, local_backend, tmp_path):
    logical_date = datetime(2026, 3, 2, tzinfo=UTC)
    log_path = tmp_path / "worker.log"
    worker = dag_test_in_subprocess(
        "ray_job_blocking", logical_date, "python -c 'import time; time.sleep(300)'", log_path
    )
    try:
        running = wait_for_running_job(
            kuberay.backend, "ray_job_blocking", f"manual__{logical_date.isoformat()}", log_path
        )
        os.kill(worker.pid, signal.SIGTERM)
        wait_for(lambda: kuberay.backend.describe_job(SHARED_CLUSTER, running.submission_id) is None)
        stopped = wait_for(lambda: local_backend.describe_job(SHARED_CLUSTER, running.submission_id).state == "STOPPED")
        assert stopped
        worker.wait(timeout=60)
    finally:
        worker.kill()
    # The RayJob is gone; the record is what is left, and it says STOPPED (not RUNNING forever).
    row = recorded_job(running.submission_id)
    assert row["state"] == "STOPPED" and row["message"] == "stopped: the task was killed"


def test_timeout_stops_the_job_and_fails(kuberay, local_backend, capfd):
    run = dags.ray_job_timeout.test(run_conf={"entrypoint": "python -c 'import time; time.sleep(300)'"})
    assert run.state == DagRunState.FAILED
    submission_id = run.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    assert kuberay.backend.describe_job(SHARED_CLUSTER, submission_id) is None
    wait_for(lambda: local_backend.describe_job(SHARED_CLUSTER, submission_id).state == JobState.STOPPED)
    assert "exceeded its timeout" in capfd.readouterr().out
    row = recorded_job(submission_id)
    assert row["state"] == "STOPPED" and row["message"] == "stopped: it exceeded its timeout"
