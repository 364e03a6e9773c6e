"""RayJobOperator end to end: real Airflow (dag.test) against real Ray started by the local backend."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime

import psutil
import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState, TaskInstanceState

from airflow_ray_platform.backends.base import ClusterState, JobState
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.records.lifecycle import read_job_log
from airflow_ray_platform.records.state_store import StateStore, clusters, jobs
from airflow_ray_platform.spec.naming import TaskIdentity

from ..conftest import SHARED_CLUSTER
from ..helpers import dag_test_in_subprocess, jobs_of, recorded_job, task_state, wait_for_running_job
from ..test_dags import ray_e2e_dags as dags
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster")


@pytest.mark.parametrize("dag", [dags.ray_job_blocking, dags.ray_job_deferrable], ids=["blocking", "deferrable"])
def test_job_succeeds_and_streams_logs(dag, backend, capfd):
    run = dag.test(run_conf={"entrypoint": "python -c \"print('hello from', 'ray')\""})
    assert run.state == DagRunState.SUCCESS
    (job,) = jobs_of(backend, run, dag.dag_id)
    assert job.state == JobState.SUCCEEDED
    assert job.metadata["owner"] == "tests" and job.metadata["team"] == "platform"
    ti = run.get_task_instance("job")
    assert ti.xcom_pull(task_ids="job", key="submission_id") == job.submission_id
    assert ti.xcom_pull(task_ids="job", key="ray_dashboard_url").endswith(f"/#/jobs/{job.submission_id}")
    assert "hello from ray" in capfd.readouterr().out


@pytest.mark.parametrize("dag", [dags.ray_job_blocking, dags.ray_job_deferrable], ids=["blocking", "deferrable"])
def test_failing_job_fails_the_task_with_the_jobs_error(dag, each_backend, capfd):
    run = dag.test(run_conf={"entrypoint": "python -c \"raise SystemExit('zone 17 diverged')\""})
    assert run.state == DagRunState.FAILED
    assert task_state(run) == TaskInstanceState.FAILED
    (job,) = jobs_of(each_backend, run, dag.dag_id)
    assert job.state == JobState.FAILED
    out = capfd.readouterr().out
    assert f"Ray job '{job.submission_id}' FAILED" in out
    assert "zone 17 diverged" in out


def test_real_retry_of_a_failed_job_submits_a_new_recorded_id(each_backend, tmp_path):
    marker = tmp_path / "first-try-done"
    entrypoint = (
        f'python -c "import os,sys; p={str(marker)!r}; done=os.path.exists(p); '
        f"open(p,'w').close(); sys.exit(0 if done else 3)\""
    )
    run = dags.ray_job_retry.test(run_conf={"entrypoint": entrypoint})
    assert run.state == DagRunState.SUCCESS
    jobs = sorted(jobs_of(each_backend, run, "ray_job_retry"), key=lambda j: j.metadata["airflow_try_number"])
    assert [(j.state, j.metadata["airflow_try_number"]) for j in jobs] == [
        (JobState.FAILED, "1"),
        (JobState.SUCCEEDED, "2"),
    ]
    identity = TaskIdentity("ray_job_retry", "job", run.run_id)
    assert [j.submission_id for j in jobs] == [identity.submission_id(), identity.submission_id(2)]


def test_worker_death_then_retry_reattaches_to_the_same_job(each_backend, tmp_path):
    """The worker dies mid-run (SIGKILL); the next try attaches to the running job: one job in all."""
    # The run's date makes its run_id, hence its submission_id: one per backend, since both backends'
    # jobs land on the same local Ray cluster here.
    logical_date = datetime(2026, 2 if each_backend.name == "local" else 3, 1, tzinfo=UTC)
    backend = each_backend
    run_id = f"manual__{logical_date.isoformat()}"
    entrypoint = "python -c \"import time; time.sleep(8); print('finished once')\""
    log_path = tmp_path / "worker.log"
    worker = dag_test_in_subprocess("ray_job_blocking", logical_date, entrypoint, log_path)
    try:
        running = wait_for_running_job(backend, "ray_job_blocking", run_id, log_path)
    finally:
        worker.kill()
        worker.wait()
    run = dags.ray_job_blocking.test(
        logical_date=logical_date, run_after=logical_date, run_conf={"entrypoint": entrypoint}
    )
    assert run.run_id == run_id
    assert run.state == DagRunState.SUCCESS
    jobs = jobs_of(backend, run, "ray_job_blocking")
    assert [j.submission_id for j in jobs] == [running.submission_id]
    assert jobs[0].state == JobState.SUCCEEDED


def test_on_kill_stops_the_running_job(backend, tmp_path):
    """SIGTERM to the task process runs on_kill, which stops the Ray job; the task then fails."""
    logical_date = datetime(2026, 2, 2, tzinfo=UTC)
    run_id = f"manual__{logical_date.isoformat()}"
    log_path = tmp_path / "worker.log"
    entrypoint = "python -c 'import time; time.sleep(300)'"
    worker = dag_test_in_subprocess("ray_job_blocking", logical_date, entrypoint, log_path)
    try:
        running = wait_for_running_job(backend, "ray_job_blocking", run_id, log_path)
        os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while backend.describe_job(SHARED_CLUSTER, running.submission_id).state != JobState.STOPPED:
            assert time.monotonic() < deadline, "on_kill did not stop the job"
            time.sleep(0.3)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    row = recorded_job(running.submission_id)
    assert row["state"] == "STOPPED" and row["ended_at"] is not None and row["submitted_at"] is not None


def test_timeout_stops_the_job_and_fails(backend, capfd):
    run = dags.ray_job_timeout.test(run_conf={"entrypoint": "python -c 'import time; time.sleep(300)'"})
    assert run.state == DagRunState.FAILED
    (job,) = jobs_of(backend, run, "ray_job_timeout")
    deadline = time.monotonic() + 30
    while (job := backend.describe_job(SHARED_CLUSTER, job.submission_id)).state != JobState.STOPPED:
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert "exceeded its timeout" in capfd.readouterr().out


def test_ephemeral_cluster_runs_the_job_and_is_torn_down(each_backend):
    run = dags.ray_job_ephemeral.test(
        run_conf={
            "entrypoint": "python -c \"import ray; ray.init(); print('CPU count', ray.cluster_resources()['CPU'])\""
        }
    )
    assert run.state == DagRunState.SUCCESS
    name = TaskIdentity("ray_job_ephemeral", "job", run.run_id).ephemeral_cluster_name("e2e-ephemeral")
    ti = run.get_task_instance("job")
    assert ti.xcom_pull(task_ids="job", key="cluster_name") == name
    assert each_backend.describe_cluster(name) is None
    assert [c.name for c in each_backend.list_clusters()] == [SHARED_CLUSTER]
    # The lifecycle outlives the cluster in the (embedded) state store.
    store = StateStore.from_airflow_connection(None)
    with store.engine.connect() as connection:
        (cluster,) = connection.execute(sa.select(clusters).where(clusters.c.name == name)).mappings().all()
        (job,) = connection.execute(sa.select(jobs).where(jobs.c.cluster_uid == cluster["cluster_uid"])).mappings()
    assert cluster["state"] == "DELETED" and cluster["ephemeral"] and cluster["owner"] == "tests"
    assert cluster["deleted_reason"] == "ephemeral cluster: its job ended"
    assert job["state"] == "SUCCEEDED" and job["dag_id"] == "ray_job_ephemeral" and job["requested_cpu"] == 1
    # ... and so does the job's driver log, readable with no cluster running.
    assert job["log_uri"].startswith("file://")
    assert "CPU count 1.0" in RayHook().read_persisted_job_log(job["submission_id"])
    kinds = [event["kind"] for event in store.events_of(cluster["cluster_uid"])]
    assert kinds[0] == "requested" and "ready" in kinds and "job_succeeded" in kinds and kinds[-1] == "deleted"


def test_an_ephemeral_cluster_whose_submit_raises_is_torn_down(local_backend, capfd):
    """Found by review: when the submit itself raised (here: a working_dir that does not exist, found only
    when Ray's client uploads it), the task failed and its own cluster stayed until the cleanup DAG's idle
    timeout. It goes with the task, as after a failed job."""
    run = dags.ray_job_ephemeral_unsubmittable.test()
    assert run.state == DagRunState.FAILED
    assert "/nonexistent/arp-working-dir" in capfd.readouterr().out  # the submit's own reason
    name = TaskIdentity("ray_job_ephemeral_unsubmittable", "job", run.run_id).ephemeral_cluster_name(
        "e2e-unsubmittable"
    )
    assert run.get_task_instance("job").xcom_pull(task_ids="job", key="cluster_name") == name
    assert local_backend.describe_cluster(name) is None


def test_an_unreachable_state_store_only_warns(backend, monkeypatch, caplog):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ARP_UNREACHABLE_STORE",
        json.dumps(
            {"conn_type": "postgres", "extra": {"sqlalchemy_url": "postgresql+psycopg://postgres@127.0.0.1:1/test"}}
        ),
    )
    run = dags.ray_job_unreachable_store.test(run_conf={"entrypoint": "python -c 'print(2)'"})
    assert run.state == DagRunState.SUCCESS
    warnings = [r.getMessage() for r in caplog.records if r.name == "airflow_ray_platform.records.lifecycle"]
    assert warnings and all("Connection refused" in w for w in warnings), warnings


def test_named_cluster_is_reused_by_a_later_task(backend, shared_cluster):
    run = dags.ray_cluster_reuse.test()
    assert run.state == DagRunState.SUCCESS
    ti = run.get_task_instance("cluster")
    assert ti.xcom_pull(task_ids="cluster", key="dashboard_url") == shared_cluster.dashboard_url
    assert len(jobs_of(backend, run, "ray_cluster_reuse")) == 1
    assert [c.name for c in backend.list_clusters()] == [SHARED_CLUSTER]


def test_bad_templated_configuration_fails_once_before_anything_is_created(backend, capfd):
    """Found only at task start, after Jinja rendered it: the task fails at once, its two retries unused
    (a retry would render the same configuration)."""
    run = dags.ray_job_bad_template.test(run_conf={"entrypoint": "Not A DNS Name"})
    assert run.state == DagRunState.FAILED
    ti = run.get_task_instance("job")
    assert (ti.state, ti.try_number) == (TaskInstanceState.FAILED, 1)
    out = capfd.readouterr().out
    assert "invalid job_configuration" in out and "name: must be a DNS-1123 label" in out
    assert [c.name for c in backend.list_clusters()] == [SHARED_CLUSTER]


@pytest.mark.parametrize("dag", [dags.ray_job_blocking, dags.ray_job_deferrable], ids=["blocking", "deferrable"])
def test_measured_utilisation_of_the_cluster_is_recorded(dag):
    """While the job runs, the wait samples the nodes' Prometheus metrics; the job's row gets the mean."""
    busy = 'python -c "import time; t = time.time()\nwhile time.time() - t < 4: pass"'
    run = dag.test(run_conf={"entrypoint": busy})
    assert run.state == DagRunState.SUCCESS
    submission_id = run.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    store = StateStore.from_airflow_connection(None)
    with store.engine.connect() as connection:
        (row,) = connection.execute(sa.select(jobs).where(jobs.c.submission_id == submission_id)).mappings()
    assert 0 < row["measured_cpu_utilisation"] <= 100
    assert row["measured_gpu_utilisation"] is None  # no GPU: Ray publishes no GPU metric, none is invented


def test_unreachable_metrics_give_no_number():
    from airflow_ray_platform.records.utilisation import scrape

    assert scrape(["http://127.0.0.1:9/metrics"], timeout=0.5) == (None, None)


def test_a_head_killed_mid_job_fails_the_task_keeps_the_log_and_removes_the_cluster(local_backend, tmp_path):
    """Every process of the head node SIGKILLed while the job runs (deferred: the trigger waits). The
    task fails saying so instead of waiting on a Jobs API that will never answer, the log the job wrote
    is persisted from what the node left on disk, and the task's ephemeral cluster is removed with every
    process it started, the orphaned job driver included."""
    logical_date = datetime(2026, 2, 3, tzinfo=UTC)
    run_id = f"manual__{logical_date.isoformat()}"
    name = TaskIdentity("ray_job_ephemeral", "job", run_id).ephemeral_cluster_name("e2e-ephemeral")
    log_path = tmp_path / "worker.log"
    entrypoint = "python -c \"import time; print('zone 1 trained', flush=True); time.sleep(300)\""
    worker = dag_test_in_subprocess("ray_job_ephemeral", logical_date, entrypoint, log_path)
    try:

        def running_job():
            cluster = local_backend.describe_cluster(name)
            if cluster is None or cluster.state != ClusterState.READY or worker.poll() is not None:
                return None
            jobs = [job for job in local_backend.list_jobs(name) if job.state == JobState.RUNNING]
            return jobs[0] if jobs and "zone 1 trained" in local_backend.job_logs(name, jobs[0].submission_id) else None

        job = wait_for(running_job, timeout=180, what="the job running on its ephemeral cluster")
        token_path = str(local_backend.registry.token_path(name))
        head = local_backend.registry.load(name).nodes[0]
        os.killpg(head.pid, signal.SIGKILL)  # the head node dies: raylet, GCS, dashboard, the job's supervisor
        worker.wait(timeout=180)
    finally:
        worker.kill()
    log = log_path.read_text()
    assert "cannot finish: its cluster died" in log, log[-3000:]
    assert local_backend.describe_cluster(name) is None  # the ephemeral cluster was removed
    leftovers = [
        process.pid
        for process in psutil.process_iter(["environ"])
        if f"RAY_AUTH_TOKEN_PATH={token_path}" in [f"{k}={v}" for k, v in (process.info["environ"] or {}).items()]
    ]
    assert leftovers == [], "processes of the dead cluster were left running"
    row = recorded_job(job.submission_id)
    assert row["state"] == "FAILED" and "its cluster died" in row["message"] and row["log_uri"]
    persisted = b"".join(read_job_log(job.submission_id)).decode()
    assert "zone 1 trained" in persisted
