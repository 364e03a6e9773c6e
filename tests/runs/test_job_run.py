"""The job run's decisions, without Ray or Airflow: reattach or submit, when a wait ends, what a stop records.

The end-to-end tests (tests/operators) check the same rules through real Airflow and real Ray; these
pin each rule on its own, fast, so a change to one shows here first.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_ray_platform.backends.base import JobInfo, JobState
from airflow_ray_platform.records.utilisation import Utilisation
from airflow_ray_platform.runs.events import ClusterEvent, JobEvent, WaitStatus
from airflow_ray_platform.runs.job_run import (
    STOPPED_BY_TIMEOUT,
    RayJobRun,
    Submission,
    decide_submission,
    stopped_job,
)
from airflow_ray_platform.spec.naming import TASK_KEY_METADATA, TRY_NUMBER_METADATA, TaskIdentity

TASK = TaskIdentity("dag", "train", "manual__2026-01-01T00:00:00+00:00", -1)
OTHER = TaskIdentity("dag", "other", "manual__2026-01-01T00:00:00+00:00", -1)


def _job(identity: TaskIdentity, state: JobState, try_number: int, submission_id: str | None = None) -> JobInfo:
    metadata = {TASK_KEY_METADATA: identity.key, TRY_NUMBER_METADATA: str(try_number)}
    return JobInfo(submission_id or identity.submission_id(try_number), "c", state, metadata=metadata)


# ------------------------------------------------------------------------ reattach or submit
def test_no_job_yet_submits_under_the_deterministic_id():
    assert decide_submission(TASK, 1, []) == Submission(TASK.submission_id())
    assert decide_submission(TASK, 1, [_job(OTHER, JobState.RUNNING, 1)]) == Submission(TASK.submission_id())


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED])
def test_a_live_or_succeeded_job_is_reattached_on_any_try(state):
    job = _job(TASK, state, 1)
    for try_number in (1, 2, 5):
        decision = decide_submission(TASK, try_number, [job])
        assert decision.reattach == job and decision.submission_id == job.submission_id


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.STOPPED])
def test_a_job_that_ended_unsuccessfully_on_an_earlier_try_is_resubmitted_under_a_new_id(state):
    failed = _job(TASK, state, 1)
    decision = decide_submission(TASK, 2, [failed])
    assert decision.reattach is None and decision.previous == failed
    assert decision.submission_id == TASK.submission_id(attempt=2) != failed.submission_id
    assert decision.submission_id.endswith("-a2")


def test_a_failed_job_of_this_very_try_is_reattached_not_resubmitted():
    """A worker that died after its job failed: the same try must not submit a second job."""
    failed = _job(TASK, JobState.FAILED, 2)
    assert decide_submission(TASK, 2, [failed]).reattach == failed


def test_the_latest_try_decides():
    first, second = _job(TASK, JobState.FAILED, 1), _job(TASK, JobState.RUNNING, 2)
    assert decide_submission(TASK, 3, [second, first]).reattach == second
    third_failed = _job(TASK, JobState.FAILED, 3)
    assert decide_submission(TASK, 4, [first, third_failed]).submission_id == TASK.submission_id(attempt=4)


def test_a_later_try_with_no_job_at_all_gets_its_try_in_the_id():
    """The first try died before submitting: the next one submits, under an id that names its try."""
    assert decide_submission(TASK, 3, []).submission_id == TASK.submission_id(attempt=3)


# ----------------------------------------------------------------------------- the wait step
def _run(**progress) -> RayJobRun:
    return RayJobRun(backend=None, cluster_name="c", submission_id="s", **progress)  # type: ignore[arg-type]


def test_a_running_job_keeps_the_wait_going_until_its_deadline():
    running = JobInfo("s", "c", JobState.RUNNING)
    assert _run().outcome(running, now=1e12) is None  # no deadline: never times out
    assert _run(timeout_at=100.0).outcome(running, now=99.0) is None
    event = _run(timeout_at=100.0, log_offset=7).outcome(running, now=100.0)
    assert event.status == WaitStatus.TIMEOUT and event.state is None and event.log_offset == 7
    assert "exceeded its timeout" in event.message


@pytest.mark.parametrize(
    ("state", "status"),
    [(JobState.SUCCEEDED, WaitStatus.SUCCESS), (JobState.FAILED, WaitStatus.FAILED), (JobState.STOPPED, "failed")],
)
def test_a_terminal_job_ends_the_wait_even_past_its_deadline(state, status):
    event = _run(timeout_at=0.0, ephemeral_cluster=True).outcome(JobInfo("s", "c", state, message="why"), now=5.0)
    assert event.status == status and event.state == state and event.message == "why"
    assert event.ephemeral_cluster and event.succeeded == (state == JobState.SUCCEEDED)


def test_a_job_that_is_gone_ends_the_wait_with_an_error():
    event = _run().outcome(None)
    assert event.status == WaitStatus.ERROR and "has no job 's'" in event.message
    assert event.failure == "Ray job 's' ERROR: cluster 'c' has no job 's'"


def test_a_run_without_a_job_cannot_wait():
    with pytest.raises(RuntimeError, match="no Ray job yet"):
        RayJobRun(backend=None, cluster_name="c").outcome(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- stop
def test_a_stopped_running_job_is_recorded_stopped_with_why_and_its_start():
    started = datetime(2026, 1, 1, tzinfo=UTC)
    running = JobInfo("s", "c", JobState.RUNNING, start_time=started)
    stopped = stopped_job(running, "s", "c", STOPPED_BY_TIMEOUT)
    assert stopped.state == JobState.STOPPED and stopped.message == STOPPED_BY_TIMEOUT
    assert stopped.start_time == started and stopped.end_time is not None and stopped.end_time > started


def test_a_job_gone_with_its_rayjob_is_still_recorded_stopped():
    assert stopped_job(None, "s", "c", "stopped").state == JobState.STOPPED


def test_a_job_ray_already_reports_stopped_is_recorded_with_why():
    """Found by a CI run: when Ray moved to STOPPED before the record was written, the cleanup DAG's reason
    ("past the platform policy's hard max_lifetime") gave way to Ray's "Job was intentionally stopped."."""
    ended = datetime(2026, 1, 1, tzinfo=UTC)
    by_ray = JobInfo("s", "c", JobState.STOPPED, message="Job was intentionally stopped.", end_time=ended)
    stopped = stopped_job(by_ray, "s", "c", STOPPED_BY_TIMEOUT)
    assert (stopped.state, stopped.message, stopped.end_time) == (JobState.STOPPED, STOPPED_BY_TIMEOUT, ended)


def test_a_job_that_ended_before_the_stop_keeps_its_own_end():
    succeeded = JobInfo("s", "c", JobState.SUCCEEDED, message="done")
    assert stopped_job(succeeded, "s", "c", "stopped") is succeeded


# ------------------------------------------------------------------------------- events
def test_job_event_survives_the_trigger_payload_round_trip():
    event = JobEvent(
        WaitStatus.FAILED,
        "s",
        "c",
        state=JobState.FAILED,
        message="boom",
        log_offset=12,
        ephemeral_cluster=True,
        utilisation=Utilisation(cpu_sum=50.0, cpu_samples=2),
    )
    payload = event.to_dict()
    assert payload["state"] == "FAILED" and payload["utilisation"]["cpu_samples"] == 2
    assert JobEvent.from_dict(payload) == event
    assert event.failure == "Ray job 's' FAILED: boom"


def test_cluster_event_survives_the_round_trip_and_leaves_out_what_it_lacks():
    ready = ClusterEvent(WaitStatus.SUCCESS, "c", dashboard_url="http://x")
    assert ready.to_dict() == {
        "status": "success",
        "cluster_name": "c",
        "ephemeral_cluster": False,
        "dashboard_url": "http://x",
    }
    assert ClusterEvent.from_dict(ready.to_dict()) == ready


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"status": "success", "cluster_name": "c"}, "lacks \\['submission_id'\\]"),
        ({"status": "done", "submission_id": "s", "cluster_name": "c"}, "'done' is not a valid WaitStatus"),
        ({"status": "failed", "submission_id": "s", "cluster_name": "c", "state": "EXPLODED"}, "EXPLODED"),
    ],
)
def test_a_malformed_job_event_is_an_error_not_a_default(payload, error):
    with pytest.raises(ValueError, match=error):
        JobEvent.from_dict(payload)


# --------------------------------------------------------------------- against real Ray
def test_new_output_returns_only_the_text_written_since_the_last_call(backend, shared_cluster):
    import time

    from airflow_ray_platform.spec.models import JobSpec

    from ..conftest import SHARED_CLUSTER

    backend.submit_job(SHARED_CLUSTER, "run-output-1", JobSpec(entrypoint="echo first-line"), {})
    run = RayJobRun(backend, SHARED_CLUSTER, "run-output-1")
    while not run.describe().state.is_terminal:
        time.sleep(0.2)
    text = run.new_output()
    assert "first-line" in text and run.log_offset == len(text)
    assert run.new_output() == "" and run.log_offset == len(text)


def test_a_job_names_its_task_through_its_metadata():
    identity = TaskIdentity("dag", "task", "manual__2026-01-01T00:00:00+00:00", 7)
    assert TaskIdentity.from_job_metadata(identity.job_metadata(2, "owner", "team")) == identity
    unmapped = TaskIdentity("dag", "task", "run/with/slashes")
    assert TaskIdentity.from_job_metadata(unmapped.job_metadata(1, "o", "t")) == unmapped
    assert TaskIdentity.from_job_metadata({"purpose": "someone else's job"}) is None
