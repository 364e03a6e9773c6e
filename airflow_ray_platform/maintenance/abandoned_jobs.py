"""Ray jobs nobody waits for any more: their task instance ended (marked failed, skipped) while they ran.

The trigger's ``on_kill`` stops a deferred task's job when a user marks the task failed, but only if a
triggerer was already running that trigger: marked failed before a triggerer picked it up, the task
leaves its job running with no one to stop it. Every sweep (the cleanup DAG's and ``airflow-ray gc``'s)
stops such jobs first, asking Airflow the task's state: from a task through the Task SDK, from the CLI
through Airflow's metadata database; the same rule either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow_ray_platform.backends.base import BackendError, ClusterState, JobInfo, RayBackend
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.runs.job_run import RayJobRun
from airflow_ray_platform.spec.naming import TaskIdentity

_module_log = logging.getLogger(__name__)

#: Task instance states after which nobody waits for the task's job any more: a user marked the task
#: failed or skipped, or it left its DAG. Not ``up_for_retry`` (the retry reattaches) nor ``success`` (a
#: task that does not wait for its job succeeds while the job runs).
ABANDONED_TASK_STATES = frozenset({"failed", "upstream_failed", "skipped", "removed"})
#: What Airflow says of a task instance (None: unknown, or Airflow cannot tell).
TaskStateLookup = Callable[[TaskIdentity], str | None]


def task_state_lookup(ti: Any) -> TaskStateLookup:
    """Task instance states as Airflow reports them to a running task (the Task SDK's ``get_task_states``):
    the cleanup DAG's view."""

    def state(identity: TaskIdentity) -> str | None:
        mapped = identity.map_index >= 0
        try:
            states = ti.get_task_states(
                identity.dag_id,
                map_index=identity.map_index if mapped else None,
                task_ids=[identity.task_id],
                run_ids=[identity.run_id],
            )
        except Exception as error:  # whatever Airflow raised: unknown, so the job is left alone
            _module_log.warning("Cannot read the state of task %s (%s)", identity.key, error)
            return None
        key = f"{identity.task_id}_{identity.map_index}" if mapped else identity.task_id
        return (states.get(identity.run_id) or {}).get(key)

    return state


def stop_abandoned_jobs(
    backend: RayBackend,
    recorder: LifecycleRecorder | None,
    task_state: TaskStateLookup,
    *,
    dry_run: bool = False,
    log: logging.Logger | None = None,
) -> list[tuple[JobInfo, str]]:
    """Stop (and record STOPPED) every active job whose task instance has ended without it. Returns each
    job stopped (or, in a dry run, that would be) with its task's state."""
    log = log or _module_log
    stopped = []
    for cluster in backend.list_clusters():
        if cluster.state != ClusterState.READY:
            continue
        try:
            jobs = backend.list_jobs(cluster.name)
        except BackendError as error:
            log.warning("Cannot list the jobs of Ray cluster %r: %s", cluster.name, error)
            continue
        for job in jobs:
            identity = TaskIdentity.from_job_metadata(job.metadata)
            if job.state.is_terminal or identity is None:
                continue
            state = task_state(identity)
            if state not in ABANDONED_TASK_STATES:
                continue
            why = f"stopped: its task instance {identity.key} ended {state} while the job ran"
            if not dry_run:
                RayJobRun(backend, cluster.name, job.submission_id, recorder=recorder, log=log).stop_and_record(why)
            log.warning("Ray job %r on %r: %s%s", job.submission_id, cluster.name, why, " (dry run)" if dry_run else "")
            stopped.append((job, state))
    return stopped


def task_state_from_metadata_db(identity: TaskIdentity) -> str | None:
    """A task instance's state read from Airflow's metadata database (the CLI's view, outside any task);
    None if Airflow has no such task instance or its database cannot be read."""
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            state = session.scalar(
                select(TaskInstance.state).where(
                    TaskInstance.dag_id == identity.dag_id,
                    TaskInstance.task_id == identity.task_id,
                    TaskInstance.run_id == identity.run_id,
                    TaskInstance.map_index == identity.map_index,
                )
            )
    except Exception as error:  # whatever the database raised: unknown, so the job is left alone
        _module_log.warning("Cannot read the state of task %s from Airflow's database (%s)", identity.key, error)
        return None
    return None if state is None else str(getattr(state, "value", state))
