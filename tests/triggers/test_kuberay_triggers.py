"""Triggers through the kuberay backend: a ``kubernetes_asyncio`` watch, not polling."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_ray_platform.backends.kuberay.backend import KubeRayBackend
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.triggers.ray import JobWaitRole, RayClusterTrigger, RayJobTrigger

from ..conftest import SHARED_CLUSTER
from ..waiting import wait_for
from .test_ray_triggers import _first_event, _rebuild

pytestmark = pytest.mark.usefixtures("shared_cluster", "via_kuberay")


@pytest.fixture(scope="module")
def via_kuberay(kuberay):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_RAY_DEFAULT", kuberay.ray_connection())
        yield


def _run_job(kuberay, submission_id: str, seconds: float) -> dict:
    """Submit a job of ``seconds`` and wait for it with the trigger; (event, API calls while waiting)."""
    entrypoint = f"python -c \"import time; print('working', flush=True); time.sleep({seconds})\""
    kuberay.backend.submit_job(SHARED_CLUSTER, submission_id, JobSpec(entrypoint=entrypoint), {})
    trigger = RayJobTrigger(
        ray_conn_id="ray_default",
        cluster_name=SHARED_CLUSTER,
        submission_id=submission_id,
        poll_interval=0.1,  # what a polling trigger would use: a watch makes it irrelevant
        stream_logs=False,
    )
    before = sum(kuberay.emulator.requests.values())
    event = asyncio.run(_first_event(_rebuild(trigger)))
    return {"event": event, "calls": sum(kuberay.emulator.requests.values()) - before}


def test_job_wait_is_a_watch_with_a_constant_number_of_calls(kuberay):
    watches = kuberay.emulator.requests["WATCH rayjobs"]
    long = _run_job(kuberay, "kuberay-trigger-long", 6)
    assert long["event"]["status"] == "success" and long["event"]["state"] == "SUCCEEDED"
    assert kuberay.emulator.requests["WATCH rayjobs"] > watches
    # A list and a watch per state it passes through (PENDING, RUNNING, SUCCEEDED), not one call per
    # 0.1 s poll over a 6 s job.
    assert long["calls"] <= 6, kuberay.emulator.requests


def test_failed_job_event_carries_kuberays_reason(kuberay):
    kuberay.backend.submit_job(
        SHARED_CLUSTER, "kuberay-trigger-fail", JobSpec(entrypoint="python -c \"raise SystemExit('zone 9')\""), {}
    )
    trigger = RayJobTrigger(
        ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, submission_id="kuberay-trigger-fail"
    )
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "failed" and event["state"] == "FAILED"
    assert event["message"].startswith("AppFailed: ")


def test_deleted_rayjob_ends_the_wait_with_an_error(kuberay):
    kuberay.backend.submit_job(
        SHARED_CLUSTER, "kuberay-trigger-gone", JobSpec(entrypoint="python -c 'import time; time.sleep(60)'"), {}
    )
    trigger = RayJobTrigger(
        ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, submission_id="kuberay-trigger-gone"
    )

    async def wait_then_delete():
        run = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(1)
        await trigger.on_kill()  # a user kills the task: the RayJob is deleted
        return await run

    event = asyncio.run(wait_then_delete())
    assert event["status"] == "error" and "has no job 'kuberay-trigger-gone'" in event["message"]
    # The RayJob is gone; the trigger's on_kill left the job's record saying so.
    from ..helpers import recorded_job

    row = recorded_job("kuberay-trigger-gone")
    assert row["state"] == "STOPPED" and row["message"] == "stopped: the task was killed"


def test_cluster_trigger_watches_until_ready_then_times_out_with_the_pods_reason(kuberay):
    ready = RayClusterTrigger(
        ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, timeout_at=time.time() + 30, startup_timeout=30
    )
    assert asyncio.run(_first_event(ready))["status"] == "success"
    backend: KubeRayBackend = kuberay.backend
    backend.create_or_get_cluster("never-fits", ClusterSpec(head={"cpu": "100", "memory": "1Gi"}), {})
    try:
        wait_for(lambda: "Unschedulable" in (backend.describe_cluster("never-fits").message or ""))
        stuck = RayClusterTrigger(
            ray_conn_id="ray_default", cluster_name="never-fits", timeout_at=time.time() + 2, startup_timeout=2
        )
        event = asyncio.run(_first_event(stuck))
    finally:
        backend.delete_cluster("never-fits")
    assert event["status"] == "error"
    assert "not ready within 2s (startup timeout)" in event["message"] and "Insufficient cpu" in event["message"]


def test_triggerer_restart_mid_watch_changes_nothing_on_kubernetes(kuberay):
    kuberay.backend.submit_job(
        SHARED_CLUSTER, "kuberay-trigger-restart", JobSpec(entrypoint="python -c 'import time; time.sleep(60)'"), {}
    )
    trigger = RayJobTrigger(
        ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, submission_id="kuberay-trigger-restart"
    )
    writes_before = {k: v for k, v in kuberay.emulator.requests.items() if not k.startswith(("GET", "WATCH", "FOLLOW"))}

    async def restart():
        run = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(1.5)  # inside the watch
        run.cancel()  # the triggerer shuts down: the task is cancelled, then cleanup() runs
        with pytest.raises(asyncio.CancelledError):
            await run
        await trigger.cleanup()

    asyncio.run(restart())
    writes_after = {k: v for k, v in kuberay.emulator.requests.items() if not k.startswith(("GET", "WATCH", "FOLLOW"))}
    assert writes_after == writes_before  # not one create, update or delete
    assert kuberay.backend.describe_job(SHARED_CLUSTER, "kuberay-trigger-restart").state in ("PENDING", "RUNNING")
    kuberay.backend.stop_job(SHARED_CLUSTER, "kuberay-trigger-restart")


def test_many_triggers_share_one_watch_of_the_namespace_and_one_log_follow_per_job(kuberay, monkeypatch):
    """30 deferred waits (10 on each of 3 RayJobs) in one event loop, as a triggerer runs them, streaming
    logs: one list and one watch of the namespace's RayJobs for all of them, and each job's submitter log
    followed once (never read whole), however many waits stream it."""
    ids = [f"kuberay-trigger-many-{index}" for index in range(3)]
    for index, submission_id in enumerate(ids):
        script = f"import time\nfor i in range(5):\n    print('job {index} line', i, flush=True); time.sleep(0.5)"
        kuberay.backend.submit_job(SHARED_CLUSTER, submission_id, JobSpec(entrypoint=f'python -c "{script}"'), {})
    triggers = [  # watchers: ten waits on one job, none of them its submitter
        RayJobTrigger(
            ray_conn_id="ray_default", cluster_name=SHARED_CLUSTER, submission_id=sid, role=JobWaitRole.WATCHER
        )
        for sid in ids
        for _ in range(10)
    ]
    before = dict(kuberay.emulator.requests)

    async def all_of_them():
        return await asyncio.gather(*(_first_event(trigger) for trigger in triggers))

    written: dict[str, list[str]] = {sid: [] for sid in ids}  # what the waits wrote to their task logs

    def log_job_output(log, submission_id, text):
        written[submission_id].append(text)

    monkeypatch.setattr("airflow_ray_platform.triggers.ray.log_job_output", log_job_output)
    events = asyncio.run(all_of_them())
    made = {key: count - before.get(key, 0) for key, count in kuberay.emulator.requests.items()}
    assert [event["state"] for event in events] == ["SUCCEEDED"] * 30
    assert made.get("WATCH rayjobs", 0) == 1 and made.get("GET rayjobs (list)", 0) == 1, made
    assert made.get("FOLLOW pods/log", 0) == 3 and made.get("GET pods/log", 0) == 0, made
    for index, submission_id in enumerate(ids):  # each of its 10 waits streamed the job's whole log, once
        whole = kuberay.backend.job_logs(SHARED_CLUSTER, submission_id)
        assert f"job {index} line 4" in whole
        assert "".join(written[submission_id]).count(f"job {index} line 4") == 10
        assert sum(map(len, written[submission_id])) == 10 * len(whole)
