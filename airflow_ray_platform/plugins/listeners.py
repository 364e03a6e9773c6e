"""Who set a Ray task's state by hand (the UI's "Mark as failed", the REST API), in the platform's audit.

A task cannot tell who marked it failed: Airflow's API server changes the task instance's state, in the
request of the user who did it, and fires its listener hooks there, after writing its own audit row
(the ``log`` table, by ``action_logging``) in that request's session. This listener, loaded with the
provider's plugin, reads that row and records the change in ``arp_events`` beside the Ray job the task
runs (its cluster, submission id and team from the job's record), the Airflow user as its actor. What
the task then does about it (``on_kill`` stopping the job) is audited on its own, by the task.

Only a row whose request set that state on that very task instance (its map index included) counts; in a
worker, or for a state the scheduler sets, there is no such row: nothing is recorded.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.listeners import hookimpl

#: Airflow's audit events of a state set through its API (``action_logging`` names them by endpoint).
STATE_SET_EVENTS = ("patch_task_instance", "bulk_task_instances")
#: How recent Airflow's row must be to be this change's (it is written in the same request).
SAME_REQUEST = timedelta(minutes=5)
#: How many recent rows of the DAG run are looked through for the one that set this task instance.
RECENT_ROWS = 50


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
    user = user_behind(session, task_instance, state)
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


def user_behind(session: Any, task_instance: Any, state: str) -> str | None:
    """The user of Airflow's newest recent audit row whose request set ``state`` on this very task instance
    (its task id, its map index or every map index, that state); None when no row says so.

    A row of ``patch_task_instance`` names the task and keeps the request's path, query and body in
    ``extra``: ``map_index`` (absent: every map index of the task) and ``new_state``. A bulk request's row
    names no task: each entity of its ``actions`` does, with its own map index and state.
    """
    import sqlalchemy as sa
    from airflow.models.log import Log
    from airflow.utils import timezone

    query = (
        sa.select(Log.owner, Log.task_id, Log.extra)
        .where(
            Log.dag_id == task_instance.dag_id,
            Log.run_id == task_instance.run_id,
            Log.event.in_(STATE_SET_EVENTS),
            Log.dttm >= timezone.utcnow() - SAME_REQUEST,
        )
        .order_by(Log.dttm.desc(), Log.id.desc())
        .limit(RECENT_ROWS)
    )
    for owner, task_id, extra in session.execute(query):
        if any(_sets(change, task_instance, state) for change in _changes(task_id, extra)):
            return owner
    return None


def _changes(task_id: str | None, extra: str | None) -> list[dict[str, Any]]:
    """The (task, map index, new state) changes one audit row's request asked for."""
    try:
        fields = json.loads(extra or "{}")
    except ValueError:
        return []
    if not isinstance(fields, dict):
        return []
    if task_id is not None:
        return [{**fields, "task_id": task_id}]
    actions = fields.get("actions") if isinstance(fields.get("actions"), list) else []
    return [
        entity
        for action in actions
        if isinstance(action, dict) and isinstance(action.get("entities"), list)
        for entity in action["entities"]
        if isinstance(entity, dict)
    ]


def _sets(change: dict[str, Any], task_instance: Any, state: str) -> bool:
    map_index = change.get("map_index")
    try:
        same_index = map_index is None or int(map_index) == task_instance.map_index
    except (TypeError, ValueError):
        return False
    new_state = change.get("new_state")
    return (
        change.get("task_id") == task_instance.task_id
        and same_index
        and isinstance(new_state, str)
        and new_state.lower() == state
    )
