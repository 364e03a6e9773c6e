"""What only a real deployment shows: a deferred task's trigger runs in the triggerer process, its
resumption in a new task process; users act through the REST API; processes die."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.spec.naming import RUN_ID_METADATA

from .conftest import CLUSTER
from .harness import Deployment

SLEEP = "python -c 'import time; print(\"started\", flush=True); time.sleep({seconds})'"


@pytest.fixture(scope="module", autouse=True)
def _unpaused(deployment: Deployment) -> None:
    for dag_id in ("ray_job_deferred", "ray_job_blocking"):
        deployment.api.unpause(dag_id)


def _jobs_of(deployment: Deployment, run_id: str):
    return [job for job in deployment.backend.list_jobs(CLUSTER) if job.metadata.get(RUN_ID_METADATA) == run_id]


def _ti(deployment: Deployment, dag_id: str, run_id: str) -> dict:
    return deployment.api.task_instances(dag_id, run_id).get("job", {})


def _run_state(deployment: Deployment, dag_id: str, run_id: str) -> str | None:
    state = deployment.api.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
    return state if state in ("success", "failed") else None


def _mark_failed_once_deferred(deployment: Deployment, run: str, *, after_trigger_started: bool):
    api = deployment.api
    api.wait("the task to defer", lambda: _ti(deployment, "ray_job_deferred", run).get("state") == "deferred", 180)
    (job,) = api.wait("its Ray job to run", lambda: _jobs_of(deployment, run), 60)
    if after_trigger_started:  # the triggerer writes the trigger's log once it runs it
        logs = Path(deployment.env["AIRFLOW_HOME"]) / "logs" / "dag_id=ray_job_deferred" / f"run_id={run}"
        api.wait("the triggerer to run the trigger", lambda: list(logs.rglob("*.log.trigger.*.log")), 60, 0.5)
    api._ok(api.client.patch(f"/dags/ray_job_deferred/dagRuns/{run}/taskInstances/job", json={"new_state": "failed"}))
    return job


def _recorded_state(deployment: Deployment, submission_id: str) -> str | None:
    with deployment.state_store().connect() as connection:
        query = sa.text("SELECT state FROM arp_jobs WHERE submission_id = :id")
        return connection.execute(query, {"id": submission_id}).scalar()


def _audited_marks(deployment: Deployment, submission_id: str) -> list[tuple[str, str | None]]:
    """(kind, Airflow user) of each audited state set by hand on the task running this job."""
    with deployment.state_store().connect() as connection:
        query = sa.text("SELECT kind, detail FROM arp_events WHERE submission_id = :id AND kind LIKE 'task_marked_%'")
        rows = connection.execute(query, {"id": submission_id}).all()
    details = [(kind, json.loads(detail) if isinstance(detail, str) else detail) for kind, detail in rows]
    return [(kind, detail["actor"]["user"]) for kind, detail in details]


def _airflow_audit_user(deployment: Deployment, run_id: str) -> str | None:
    """Who Airflow's own audit log says patched a task instance of this run."""
    with deployment.state_store().connect() as connection:
        query = sa.text("SELECT owner FROM log WHERE event = 'patch_task_instance' AND run_id = :run")
        return connection.execute(query, {"run": run_id}).scalar()


def test_a_deferred_task_marked_failed_stops_its_ray_job_and_records_it(deployment: Deployment, cluster: str):
    """Through the trigger's on_kill when a triggerer runs the trigger; through the cleanup DAG's sweep
    when the task was marked failed before any triggerer picked its trigger up (Airflow then calls no
    on_kill at all, and the job would run on with no one waiting for it). Found by review: the audit
    did not say who marked the task failed; now the user Airflow's API server acted for is the actor."""
    api, backend = deployment.api, deployment.backend
    running = api.trigger("ray_job_deferred", {"entrypoint": SLEEP.format(seconds=600)})
    job = _mark_failed_once_deferred(deployment, running, after_trigger_started=True)
    api.wait(
        "on_kill to stop the Ray job",
        lambda: backend.describe_job(cluster, job.submission_id).state == JobState.STOPPED,
        60,
        interval=0.5,
    )
    api.wait("the job recorded STOPPED", lambda: _recorded_state(deployment, job.submission_id) == "STOPPED", 30)
    user = _airflow_audit_user(deployment, running)
    assert user
    assert _audited_marks(deployment, job.submission_id) == [("task_marked_failed", user)]

    early = api.trigger("ray_job_deferred", {"entrypoint": SLEEP.format(seconds=600)})
    job = _mark_failed_once_deferred(deployment, early, after_trigger_started=False)
    api.unpause("ray_cleanup_idle_clusters")
    sweep = api.trigger("ray_cleanup_idle_clusters", {})
    assert api.wait("the sweep", lambda: _run_state(deployment, "ray_cleanup_idle_clusters", sweep), 300) == "success"
    assert backend.describe_job(cluster, job.submission_id).state == JobState.STOPPED
    assert _recorded_state(deployment, job.submission_id) == "STOPPED"
    assert backend.describe_cluster(cluster) is not None  # not managed by the provider: never swept


def test_a_triggerer_killed_while_a_task_is_deferred_loses_nothing(deployment: Deployment, cluster: str):
    api = deployment.api
    run = api.trigger("ray_job_deferred", {"entrypoint": SLEEP.format(seconds=20)})
    api.wait("the task to defer", lambda: _ti(deployment, "ray_job_deferred", run).get("state") == "deferred", 180)
    deployment.stop("airflow-triggerer", signal.SIGKILL)
    deployment.start("airflow-triggerer")
    assert api.wait("the run to end", lambda: _run_state(deployment, "ray_job_deferred", run), 300) == "success"
    (job,) = _jobs_of(deployment, run)  # exactly one Ray job: the new triggerer took the wait over
    assert job.state == JobState.SUCCEEDED
    links = api.get(f"/dags/ray_job_deferred/dagRuns/{run}/taskInstances/job/links")
    assert links["extra_links"]["Ray Dashboard"] == deployment.backend.job_dashboard_url(cluster, job.submission_id)


def test_a_task_process_killed_mid_job_reattaches_on_retry(deployment: Deployment, cluster: str):
    api = deployment.api
    run = api.trigger("ray_job_blocking", {"entrypoint": SLEEP.format(seconds=20)})
    (job,) = api.wait("its Ray job to run", lambda: _jobs_of(deployment, run), 180)
    ti = api.wait("the task's pid", lambda: (ti := _ti(deployment, "ray_job_blocking", run)).get("pid") and ti, 60)
    assert ti["state"] == "running" and ti["try_number"] == 1
    task_process = psutil.Process(ti["pid"])
    scheduler = psutil.Process(deployment.processes["airflow-scheduler"].pid)
    assert task_process in scheduler.children(recursive=True)  # a process this deployment started
    task_process.send_signal(signal.SIGKILL)
    assert api.wait("the run to end", lambda: _run_state(deployment, "ray_job_blocking", run), 300) == "success"
    assert _ti(deployment, "ray_job_blocking", run)["try_number"] == 2
    assert [j.submission_id for j in _jobs_of(deployment, run)] == [job.submission_id]  # reattached


def test_the_worker_the_triggerer_and_the_scheduler_send_their_metrics(deployment: Deployment, cluster: str):
    """StatsD as ``deploy/airflow.env`` configures it: the worker that submits, the triggerer that waits
    (its shared poll and the job's end) and the scheduler each reach the receiver, tagged."""
    api, statsd = deployment.api, deployment.statsd
    run = api.trigger("ray_job_deferred", {"entrypoint": SLEEP.format(seconds=15)})  # past the deferral's settling
    assert api.wait("the run to end", lambda: _run_state(deployment, "ray_job_deferred", run), 300) == "success"
    team = {"backend": "local", "team": "platform"}
    assert team in [s.tags for s in statsd.provider_samples("job.submitted")]  # the worker
    assert statsd.wait_for(lambda: statsd.provider_samples("polling.calls"))  # the triggerer's shared poll
    assert {"backend": "local"} in [s.tags for s in statsd.provider_samples("polling.calls")]
    assert "trigger" in {s.tags["waiter"] for s in statsd.provider_samples("job.detection_lag")}
    assert {**team, "outcome": "succeeded"} in [s.tags for s in statsd.provider_samples("job.finished")]
    airflows_own = {sample.name for sample in list(statsd.samples)}
    assert "airflow.scheduler_heartbeat" in airflows_own and "airflow.triggerer_heartbeat" in airflows_own
