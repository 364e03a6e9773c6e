"""Whose hand set a task instance's state: the listener's reading of Airflow's own audit rows (the rows
are written here as Airflow's API server writes them, into the session's real metadata database)."""

from __future__ import annotations

import json
import uuid

import pytest
from airflow.models.log import Log
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.session import create_session

from airflow_ray_platform.plugins.listeners import user_behind

pytestmark = pytest.mark.usefixtures("airflow_db")


def _logged(dag_id: str, run_id: str, owner: str, task_id: str | None, **extra) -> None:
    """One row as ``action_logging`` writes it for a PATCH of task instances (path, query and body in
    ``extra``; a bulk request names no task in its columns)."""
    with create_session() as session:
        session.add(
            Log(
                event="patch_task_instance" if task_id else "bulk_task_instances",
                owner=owner,
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                extra=json.dumps({**extra, "method": "PATCH"}),
            )
        )


def test_the_user_is_the_one_whose_request_set_that_state_on_that_map_index():
    """Found by review: the newest state-setting row of the task within five minutes was taken, whatever
    map index and state it set, and bulk rows (no task id) never matched."""
    dag_id, run_id = f"listener_{uuid.uuid4().hex[:8]}", "manual__1"
    ti = lambda map_index: TaskInstanceKey(dag_id, "train", run_id, 1, map_index)  # noqa: E731
    _logged(dag_id, run_id, "alice", "train", map_index="3", new_state="failed")
    _logged(dag_id, run_id, "bob", "train", map_index="2", new_state="success")  # newer, another index
    _logged(dag_id, "manual__2", "mallory", "train", new_state="failed")  # another run
    with create_session() as session:
        assert user_behind(session, ti(3), "failed") == "alice"
        assert user_behind(session, ti(2), "failed") is None  # bob set success there, not failed
        assert user_behind(session, ti(2), "success") == "bob"
        assert user_behind(session, ti(4), "failed") is None  # nobody touched index 4
    _logged(dag_id, run_id, "carol", "train", new_state="failed")  # no map index: every index of the task
    _logged(
        dag_id,
        run_id,
        "dave",
        None,
        actions=[
            {
                "action": "update",
                "entities": [
                    {"task_id": "train", "map_index": 7, "new_state": "success"},
                    {"task_id": "score", "new_state": "failed"},
                ],
            }
        ],
    )
    with create_session() as session:
        assert user_behind(session, ti(4), "failed") == "carol"
        assert user_behind(session, ti(7), "success") == "dave"
        assert user_behind(session, TaskInstanceKey(dag_id, "score", run_id, 1, -1), "failed") == "dave"
        assert user_behind(session, TaskInstanceKey(dag_id, "evaluate", run_id, 1, -1), "failed") is None
