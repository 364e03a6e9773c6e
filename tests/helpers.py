"""Helpers the end-to-end tests share: finding a task's jobs, running a DAG in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.records.state_store import StateStore, jobs
from airflow_ray_platform.spec.naming import TASK_KEY_METADATA, TaskIdentity

from .conftest import SHARED_CLUSTER, TEST_DAGS


def task_state(run, task_id="job"):
    return run.get_task_instance(task_id).state


def jobs_of(backend, run, dag_id, task_id="job", cluster=SHARED_CLUSTER):
    key = TaskIdentity(dag_id, task_id, run.run_id).key
    return [j for j in backend.list_jobs(cluster) if j.metadata.get(TASK_KEY_METADATA) == key]


#: Run first in a process (``python -c`` with the command after it): a user namespace of its own whose
#: limit of user namespaces is 0, so that nothing under it can make one: a machine that refuses the
#: local backend's sandbox, for real (the kernel refuses with ENOSPC), without changing this machine.
WITHOUT_USER_NAMESPACES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000) != 0:
    sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
    with open(f"/proc/self/{name}", "w") as handle:
        handle.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as handle:
    handle.write("0")
os.execv(sys.argv[1], sys.argv[1:])
"""


def dag_test_in_subprocess(
    dag_name: str,
    logical_date: datetime,
    entrypoint: str | None,
    log_path,
    module: str = "ray_e2e_dags",
    *,
    user_namespaces: bool = True,
    environment: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """``dag.test()`` of a test DAG in a process of its own (a worker to kill), ``entrypoint`` as its param;
    ``user_namespaces=False``: on a machine that cannot make them (:data:`WITHOUT_USER_NAMESPACES`);
    ``environment``: added to this process's (Airflow's configuration, as a worker's would be set)."""
    conf = "{}" if entrypoint is None else "{'entrypoint': sys.argv[3]}"
    code = (
        f"import sys, datetime; sys.path.insert(0, sys.argv[1]); import {module} as d; "
        "when = datetime.datetime.fromisoformat(sys.argv[2]); "
        f"getattr(d, {dag_name!r}).test(logical_date=when, run_after=when, run_conf={conf})"
    )
    command = [sys.executable, "-c", code, str(TEST_DAGS), logical_date.isoformat(), entrypoint or ""]
    if not user_namespaces:
        command = [sys.executable, "-c", WITHOUT_USER_NAMESPACES, *command]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})}
        )


def recorded_job(submission_id: str) -> dict:
    """The job's row in the (embedded) state store, which every test process shares."""
    store = StateStore.from_airflow_connection(None)
    with store.engine.connect() as connection:
        (row,) = connection.execute(sa.select(jobs).where(jobs.c.submission_id == submission_id)).mappings()
    return dict(row)


def wait_for_running_job(backend, dag_id, run_id, log_path, timeout=90):
    key = TaskIdentity(dag_id, "job", run_id).key
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [j for j in backend.list_jobs(SHARED_CLUSTER) if j.metadata.get(TASK_KEY_METADATA) == key]
        if found and found[0].state == JobState.RUNNING:
            return found[0]
        time.sleep(0.3)
    raise AssertionError("the job never started running:\n" + log_path.read_text()[-3000:])
