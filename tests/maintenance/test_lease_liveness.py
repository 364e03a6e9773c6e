"""A session's lease holds until it expires, with no DAG run to ask; a task's holds while its run runs."""

from __future__ import annotations

from datetime import timedelta

from airflow_ray_platform.backends.base import Lease
from airflow_ray_platform.maintenance.leases import DagRunLiveness
from airflow_ray_platform.spec.naming import SESSION_DAG_ID, TaskIdentity
from airflow_ray_platform.spec.timestamps import utc_now


def test_a_session_lease_lives_until_it_expires_and_a_task_lease_while_its_run_runs():
    asked: list[tuple[str, str]] = []

    def count_running(dag_id: str, run_id: str) -> int:
        asked.append((dag_id, run_id))
        return 1 if run_id == "running" else 0

    live = DagRunLiveness(count_running)
    now = utc_now()
    session = TaskIdentity(SESSION_DAG_ID, "notebook", "session__me__1")
    assert live(Lease(session, now, now + timedelta(hours=1)))
    assert not live(Lease(session, now - timedelta(hours=9), now - timedelta(hours=1)))
    assert asked == []  # no DAG run is asked about for a session
    assert live(Lease(TaskIdentity("dag", "task", "running"), now))
    assert not live(Lease(TaskIdentity("dag", "task", "ended"), now))
    assert asked == [("dag", "running"), ("dag", "ended")]


def test_a_session_lease_keeps_its_expiry_through_the_record():
    now = utc_now().replace(microsecond=0)
    lease = Lease(TaskIdentity(SESSION_DAG_ID, "notebook", "session__me__1"), now, now + timedelta(hours=8))
    assert Lease.from_dict(lease.to_dict()) == lease
    task_lease = Lease(TaskIdentity("dag", "task", "run"), now)
    assert "expires_at" not in task_lease.to_dict() and Lease.from_dict(task_lease.to_dict()) == task_lease
