"""Triggers against real Ray: full state in serialize(), restarts change nothing, on_kill stops the job."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.spec.models import JobSpec
from airflow_ray_platform.triggers.ray import JobWaitRole, RayClusterTrigger, RayJobTrigger

from ..conftest import SHARED_CLUSTER

pytestmark = pytest.mark.usefixtures("shared_cluster")


def _rebuild(trigger):
    classpath, kwargs = trigger.serialize()
    kwargs = json.loads(json.dumps(kwargs))  # what the metadata DB stores
    assert classpath == f"{type(trigger).__module__}.{type(trigger).__qualname__}"
    return type(trigger)(**kwargs)


ACTOR = {"team": "forecasting", "identity": ["d", "t", "r", 3], "try_number": 2, "cleanup": False, "user": None}
UTILISATION = {"cpu_sum": 150.0, "cpu_samples": 3, "gpu_sum": 10.0, "gpu_samples": 1}


def test_a_job_trigger_serializes_every_argument_and_rebuilds_from_it():
    """Every argument set to a value other than its default, compared with a literal: an argument that
    serialize() dropped would be missing here, and one the constructor ignored would come back changed."""
    kwargs = {
        "ray_conn_id": "ray_prod",
        "cluster_name": "c",
        "submission_id": "s",
        "poll_interval": 0.5,
        "timeout_at": 123.0,
        "stream_logs": False,
        "log_offset": 42,
        "role": "watcher",
        "ephemeral_cluster": True,
        "utilisation": UTILISATION,
        "state_store_conn_id": "ray_records",
        "log_storage_uri": "s3://logs/prod",
        "not_before": 99.5,
        "actor": ACTOR,
    }
    classpath, serialized = RayJobTrigger(**kwargs).serialize()
    assert classpath == "airflow_ray_platform.triggers.ray.RayJobTrigger"
    assert serialized == kwargs
    assert _rebuild(RayJobTrigger(**kwargs)).serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    ("stored", "role"),
    [
        ({"stop_on_kill": True, "finish_job": True}, JobWaitRole.SUBMITTER),
        ({"stop_on_kill": False}, JobWaitRole.WATCHER),
    ],
    ids=["operator", "sensor"],
)
def test_a_trigger_serialized_before_roles_existed_still_deserializes(stored, role):
    """A deferred task's trigger row written by the previous release (``stop_on_kill``, ``finish_job``) keeps
    working after an upgrade, as the role it meant."""
    row = {"ray_conn_id": "ray_default", "cluster_name": "c", "submission_id": "s", "log_offset": 7, **stored}
    trigger = RayJobTrigger(**row)
    assert trigger.role == role
    assert trigger.serialize()[1]["role"] == role.value and "stop_on_kill" not in trigger.serialize()[1]


def test_a_cluster_trigger_serializes_every_argument_and_rebuilds_from_it():
    kwargs = {
        "ray_conn_id": "ray_prod",
        "cluster_name": "c",
        "timeout_at": 1.0,
        "startup_timeout": 60.0,
        "poll_interval": 0.25,
        "ephemeral_cluster": True,
        "not_before": 7.0,
        "actor": ACTOR,
        "state_store_conn_id": "ray_records",
    }
    classpath, serialized = RayClusterTrigger(**kwargs).serialize()
    assert classpath == "airflow_ray_platform.triggers.ray.RayClusterTrigger"
    assert serialized == kwargs
    assert _rebuild(RayClusterTrigger(**kwargs)).serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    "classpath",
    ["airflow_ray_platform.triggers.ray.RayJobTrigger", "airflow_ray_platform.triggers.ray.RayClusterTrigger"],
)
def test_classpaths_stored_by_running_deployments_still_import(classpath):
    """A deferred task's trigger row holds its classpath: it must keep importing across releases."""
    from airflow._shared.module_loading import import_string  # what the triggerer loads a classpath with

    assert issubclass(import_string(classpath), (RayJobTrigger, RayClusterTrigger))


async def _first_event(trigger, timeout=120):
    async def first():
        async for event in trigger.run():
            return event.payload

    return await asyncio.wait_for(first(), timeout)


def _submit(backend, submission_id, entrypoint):
    backend.submit_job(SHARED_CLUSTER, submission_id, JobSpec(entrypoint=entrypoint), {})
    deadline = time.monotonic() + 60
    while backend.describe_job(SHARED_CLUSTER, submission_id).state != JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_triggerer_restart_changes_nothing_and_a_new_instance_resumes(backend):
    _submit(backend, "trigger-restart", "python -c \"import time; print('step one', flush=True); time.sleep(5)\"")
    trigger = RayJobTrigger(
        ray_conn_id="ray_default",
        cluster_name=SHARED_CLUSTER,
        submission_id="trigger-restart",
        poll_interval=0.3,
    )

    async def restart():
        run = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(1.5)
        run.cancel()  # the triggerer shuts down: the task is cancelled, then cleanup() runs
        with pytest.raises(asyncio.CancelledError):
            await run
        await trigger.cleanup()

    asyncio.run(restart())
    assert backend.describe_job(SHARED_CLUSTER, "trigger-restart").state == JobState.RUNNING
    assert backend.describe_cluster(SHARED_CLUSTER) is not None
    event = asyncio.run(_first_event(_rebuild(trigger)))
    assert event["status"] == "success"
    assert event["submission_id"] == "trigger-restart"
    assert event["log_offset"] > 0


def test_on_kill_stops_the_job(backend):
    _submit(backend, "trigger-kill", "python -c 'import time; time.sleep(300)'")
    trigger = RayJobTrigger(ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, submission_id="trigger-kill")
    asyncio.run(trigger.on_kill())
    deadline = time.monotonic() + 60
    while backend.describe_job(SHARED_CLUSTER, "trigger-kill").state != JobState.STOPPED:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    event = asyncio.run(_first_event(_rebuild(trigger)))
    assert event["status"] == "failed" and event["state"] == "STOPPED"


def test_sensor_trigger_does_not_stop_on_kill(backend):
    """Ray stops a job asynchronously, so the job is watched to its own end: a sensor's on_kill that
    stopped it would make it end STOPPED, not SUCCEEDED."""
    _submit(backend, "trigger-watch", "python -c 'import time; time.sleep(4)'")
    trigger = RayJobTrigger(
        ray_conn_id="ray_default",
        cluster_name=SHARED_CLUSTER,
        submission_id="trigger-watch",
        role=JobWaitRole.WATCHER,
    )
    asyncio.run(trigger.on_kill())
    deadline = time.monotonic() + 60
    while not (job := backend.describe_job(SHARED_CLUSTER, "trigger-watch")).state.is_terminal:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job.state == JobState.SUCCEEDED


def test_cluster_trigger_reports_ready(shared_cluster):
    trigger = RayClusterTrigger(
        ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, timeout_at=time.time() + 30, startup_timeout=30
    )
    event = asyncio.run(_first_event(trigger))
    assert event == {
        "status": "success",
        "cluster_name": SHARED_CLUSTER,
        "ephemeral_cluster": False,
        "dashboard_url": shared_cluster.dashboard_url,
    }
    missing = RayClusterTrigger(
        ray_conn_id="ray_default", cluster_name="absent", timeout_at=time.time() + 30, startup_timeout=30
    )
    assert "does not exist" in asyncio.run(_first_event(missing))["message"]


def test_cluster_trigger_times_out_naming_the_startup_timeout(monkeypatch, tmp_path):
    from airflow_ray_platform.backends.local.backend import LocalBackend
    from airflow_ray_platform.spec.models import ClusterSpec

    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_TIMEOUT_TEST",
        json.dumps({"conn_type": "ray", "extra": {"backend": "local", "root_dir": str(tmp_path)}}),
    )
    backend = LocalBackend(tmp_path)
    backend.create_or_get_cluster("slow", ClusterSpec(head={"cpu": "1", "memory": "1Gi"}), {})
    try:
        trigger = RayClusterTrigger(
            ray_conn_id="ray_timeout_test", cluster_name="slow", timeout_at=time.time() - 1, startup_timeout=45
        )
        event = asyncio.run(_first_event(trigger))
    finally:
        backend.delete_cluster("slow")
    assert event["status"] == "error"
    assert "was not ready within 45s (startup timeout)" in event["message"]


def test_a_stuck_backend_call_never_blocks_the_event_loop(monkeypatch):
    """A dashboard that accepts connections and never answers: the loop keeps ticking meanwhile."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    port = server.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_RAY_STALLED", json.dumps({"conn_type": "ray", "host": "127.0.0.1", "port": port}))
    trigger = RayJobTrigger(ray_conn_id="ray_stalled", cluster_name="default", submission_id="s", poll_interval=0.1)

    async def measure():
        run = asyncio.ensure_future(_first_event(trigger))
        ticks, last, worst = 0, time.monotonic(), 0.0
        while ticks < 40:  # ~2 s of 50 ms ticks while the trigger's HTTP call hangs
            await asyncio.sleep(0.05)
            now = time.monotonic()
            worst, last, ticks = max(worst, now - last), now, ticks + 1
        stuck = not run.done()
        run.cancel()
        for connection, _ in accepted:
            connection.close()
        server.close()
        return stuck, worst

    stuck, worst = asyncio.run(measure())
    assert accepted, "the trigger never reached the dashboard"
    assert stuck, "the backend call should still be hanging on the silent server"
    assert worst < 1.0, f"the event loop stalled for {worst:.2f}s"


@pytest.mark.usefixtures("airflow_db")
def test_the_operators_trigger_records_the_end_and_persists_the_log_before_its_event(backend, tmp_path):
    """So that the task resumed in a fresh process has nothing left to ask Ray (the deferred path's
    detection lag); a sensor's trigger only watches."""
    from airflow_ray_platform.records.lifecycle import read_job_log

    from ..helpers import recorded_job

    _submit(backend, "trigger-finish", "python -c \"import time; print('trained', flush=True); time.sleep(1)\"")
    common = {"ray_conn_id": "ray_default", "cluster_name": SHARED_CLUSTER, "submission_id": "trigger-finish"}
    storage = f"file://{tmp_path}"
    finishing = RayJobTrigger(**common, poll_interval=0.3, role=JobWaitRole.SUBMITTER, log_storage_uri=storage)
    event = asyncio.run(_first_event(_rebuild(finishing)))
    assert event["status"] == "success" and event["finished"] is True
    assert recorded_job("trigger-finish")["state"] == "SUCCEEDED"
    assert b"trained" in b"".join(read_job_log("trigger-finish", None, storage))
    assert event["log_offset"] == len(backend.job_logs(SHARED_CLUSTER, "trigger-finish"))

    watching = RayJobTrigger(**common, poll_interval=0.3, role=JobWaitRole.WATCHER)
    assert "finished" not in asyncio.run(_first_event(watching))


def test_many_triggers_on_one_cluster_share_one_status_call_per_interval(backend, monkeypatch):
    """40 deferred waits (10 on each of 4 real jobs) in one event loop, as a triggerer runs them: the
    cluster is asked once per interval for all of them, never once per trigger."""
    from collections import Counter

    from airflow_ray_platform.backends.local.backend import LocalBackend

    calls: Counter[str] = Counter()
    for name in ("list_jobs", "describe_job", "job_logs", "metrics_urls"):
        real = getattr(LocalBackend, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(LocalBackend, name, counted)
    ids = [f"trigger-many-{index}" for index in range(4)]
    for index, submission_id in enumerate(ids):
        script = f"import time; print('job {index} up', flush=True); time.sleep({2 + index})"
        _submit(backend, submission_id, f'python -c "{script}"')
    calls.clear()
    interval = 0.5
    triggers = [
        RayJobTrigger(
            ray_conn_id="ray_default",
            cluster_name=SHARED_CLUSTER,
            submission_id=sid,
            poll_interval=interval,
            role=JobWaitRole.WATCHER,  # ten waits on each job, none of them its submitter
        )
        for sid in ids
        for _ in range(10)
    ]

    async def all_of_them():
        return await asyncio.gather(*(_first_event(trigger) for trigger in triggers))

    started = time.monotonic()
    events = asyncio.run(all_of_them())
    elapsed = time.monotonic() - started
    assert [event["status"] for event in events] == ["success"] * 40
    assert calls["describe_job"] == 0 and calls["job_logs"] == 0  # logs are read from their offset, not whole
    rounds = elapsed / interval + 2
    assert calls["list_jobs"] <= rounds, (calls, elapsed)  # one per interval, for all 40
    assert calls["metrics_urls"] <= rounds, (calls, elapsed)
