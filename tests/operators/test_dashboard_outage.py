"""A dashboard that goes away and comes back while a task waits: the blocking and the deferred wait ride it out.

The session's shared Ray cluster is reached through a dashboard connection whose address is a relay
(tests/tcp_relay.py). Mid-wait the relay goes down for about a second (connections refused, open ones
cut, as while a dashboard restarts) and comes back on the same port. Both waits go through the same
fault policy (``backends.retries``), so both tasks succeed, and both logs show the failed calls they
tolerated.
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

import pytest
from airflow.utils.state import DagRunState

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.spec.naming import DAG_ID_METADATA

from ..conftest import SHARED_CLUSTER
from ..helpers import jobs_of
from ..tcp_relay import TcpRelay
from ..test_dags import ray_e2e_dags as dags
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster")


@pytest.mark.parametrize(
    "dag", [dags.ray_job_dashboard_blocking, dags.ray_job_dashboard_deferrable], ids=["blocking", "deferrable"]
)
def test_a_dashboard_restart_mid_wait_fails_neither_wait(dag, local_backend, shared_cluster, monkeypatch, capfd):
    address = urlsplit(shared_cluster.dashboard_url)
    relay = TcpRelay(address.hostname, address.port).start()
    token = local_backend.registry.read_token(SHARED_CLUSTER)
    connection = {"conn_type": "ray", "host": "127.0.0.1", "port": relay.port, "password": token}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_RESTARTING", json.dumps({**connection, "extra": {"cluster_name": "existing"}}))
    entrypoint = "python -c \"import time; time.sleep(10); print('survived the restart')\""

    def restart_mid_wait():
        def running():
            jobs = [j for j in local_backend.list_jobs(SHARED_CLUSTER) if j.metadata.get(DAG_ID_METADATA) == dag.dag_id]
            return next((j for j in jobs if j.state == JobState.RUNNING), None)

        wait_for(running, timeout=60, what="the job running")
        time.sleep(2)  # the wait (in the task, or in the trigger once deferred) is polling now
        relay.stop()
        time.sleep(1.2)  # the dashboard is away for a little over two poll intervals
        relay.start()

    restarter = threading.Thread(target=restart_mid_wait, daemon=True)
    restarter.start()
    try:
        run = dag.test(run_conf={"entrypoint": entrypoint})  # dag.test in the main thread, as Airflow expects
    finally:
        restarter.join(timeout=60)
        relay.stop()
    assert run.state == DagRunState.SUCCESS
    (job,) = jobs_of(local_backend, run, dag.dag_id)
    assert job.state == JobState.SUCCEEDED
    out = capfd.readouterr().out
    assert "Ray status call failed (1/5)" in out  # the outage reached the wait, which tolerated it
    assert "survived the restart" in out
