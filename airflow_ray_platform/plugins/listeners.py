"""Who set a Ray task's state by hand (the UI's "Mark as failed", the REST API), in the platform's audit.

A task cannot tell who marked it failed: Airflow's API server changes the task instance's state, in the
request of the user who did it, and fires its listener hooks there, after writing its own audit row
(the ``log`` table, by ``action_logging``) in that request's session. This listener, loaded with the
provider's plugin, reads that row and records the change in ``arp_events`` beside the Ray job the task
runs (its cluster, submission id and team from the job's record), the Airflow user as its actor. What
the task then does about it (``on_kill`` stopping the job) is audited on its own, by the task.

In a worker, or for a state the scheduler sets, there is no such row: nothing is recorded.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.listeners import hookimpl

#: Airflow's audit events of a state set through its API (``action_logging`` names them by endpoint).
STATE_SET_EVENTS = ("patch_task_instance", "bulk_task_instances")
#: How recent Airflow's row must be to be this change's (it is written in the same request).
SAME_REQUEST = timedelta(minutes=5)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    record_state_set(task_instance, "failed")


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    record_state_set(task_instance, "success")


def record_state_set(task_instance: Any, state: str) -> None:
    """Audit ``state`` set on ``task_instance`` by the user Airflow's own audit row names, if the task runs
    a Ray job the platform recorded; anything else is left alone."""
    from sqlalchemy.orm import object_session
    from sqlalchemy.orm.exc import UnmappedInstanceError

    try:
        session = object_session(task_instance)
    except UnmappedInstanceError:  # a worker's task instance (Task SDK): not a change made by hand
        return
    if session is None:
        return
    user = _user_behind(session, task_instance)
    if user is None:
        return
    from airflow_ray_platform import settings
    from airflow_ray_platform.records.lifecycle import LifecycleRecorder
    from airflow_ray_platform.spec.naming import TaskIdentity
    from airflow_ray_platform.tenancy.policy import Actor

    identity = TaskIdentity(task_instance.dag_id, task_instance.task_id, task_instance.run_id, task_instance.map_index)
    recorder = LifecycleRecorder(settings.state_store_conn_id())
    job = recorder.store.latest_job_of_task(identity.dag_id, identity.task_id, identity.run_id, identity.map_index)
    if job is None:
        return
    actor = Actor(team=job["team"], identity=identity, try_number=task_instance.try_number, user=user)
    recorder.task_state_set(job, actor, state)


def _user_behind(session: Any, task_instance: Any) -> str | None:
    """The user of Airflow's newest audit row of a state set on this task instance in this request."""
    import sqlalchemy as sa
    from airflow.models.log import Log
    from airflow.utils import timezone

    query = (
        sa.select(Log.owner)
        .where(
            Log.dag_id == task_instance.dag_id,
            Log.run_id == task_instance.run_id,
            Log.task_id == task_instance.task_id,
            Log.event.in_(STATE_SET_EVENTS),
            Log.dttm >= timezone.utcnow() - SAME_REQUEST,
        )
        .order_by(Log.dttm.desc())
        .limit(1)
    )
    return session.scalar(query)
