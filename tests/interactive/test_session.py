"""A notebook's or a terminal's cluster from a ``job_configuration``: leased while in use, released after,
reached by Ray's own client with the cluster's token; from a plain Python process, a real notebook executed
headless (nbclient, ipykernel), and ``airflow-ray session``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from airflow_ray_platform.spec.naming import SESSION_DAG_ID

from ..conftest import SHARED_CLUSTER

pytestmark = pytest.mark.usefixtures("shared_cluster", "airflow_db")

CONFIG = {"name": "notebook", "owner": "me", "team": "platform", "cluster": {"name": SHARED_CLUSTER}}
CLI = str(Path(sys.executable).parent / "airflow-ray")

USE_THE_CLUSTER = f"""
import json, ray
from airflow_ray_platform.interactive import ray_cluster
from airflow_ray_platform.backends.local.backend import LocalBackend

with ray_cluster({CONFIG!r}) as cluster:
    cluster.init(num_cpus=None, log_to_driver=False)

    @ray.remote(num_cpus=0.1)
    def square(x):
        return x * x

    squares = ray.get([square.remote(i) for i in range(5)])
    leases = [lease.holder.dag_id for lease in LocalBackend().describe_cluster(cluster.cluster_name).leases]
    ray.shutdown()
    seen = {{"squares": squares, "leases": leases, "address": cluster.address, "shown": repr(cluster)}}
"""


def _session_leases(local_backend) -> list:
    return [
        lease
        for lease in local_backend.describe_cluster(SHARED_CLUSTER).leases
        if lease.holder.dag_id == SESSION_DAG_ID
    ]


def test_a_plain_python_process_gets_the_cluster_and_releases_it(local_backend):
    code = USE_THE_CLUSTER + "\nprint(json.dumps(seen))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["squares"] == [0, 1, 4, 9, 16]
    assert SESSION_DAG_ID in seen["leases"]  # held while in use ...
    assert _session_leases(local_backend) == []  # ... and released on leaving the block
    token = local_backend.connection(SHARED_CLUSTER).token
    assert seen["address"].startswith("ray://127.0.0.1:") and token not in seen["shown"]


def test_a_real_notebook_executed_headless(local_backend, tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(textwrap.dedent(USE_THE_CLUSTER)),
        nbformat.v4.new_code_cell(
            "assert seen['squares'] == [0, 1, 4, 9, 16], seen\nprint('squares', seen['squares'])"
        ),
    ]
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output.get("text", "") for cell in notebook.cells for output in cell.outputs]
    assert "squares [0, 1, 4, 9, 16]\n" in outputs
    assert _session_leases(local_backend) == []


def test_airflow_ray_session_runs_a_command_against_the_cluster(local_backend, tmp_path):
    path = tmp_path / "notebook.yaml"
    path.write_text(json.dumps(CONFIG))
    script = (
        "import os, ray; ray.init(log_to_driver=False); "
        "print('cpus', ray.cluster_resources()['CPU'], 'token' in os.environ['RAY_AUTH_TOKEN'] or 'hidden')"
    )
    done = subprocess.run(
        [CLI, "session", str(path), "--", sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("cpus ")
    assert f"Ray cluster {SHARED_CLUSTER} on local, leased until" in " ".join(done.stderr.split())
    assert local_backend.connection(SHARED_CLUSTER).token not in done.stdout + done.stderr
    assert _session_leases(local_backend) == []
    failed = subprocess.run(
        [CLI, "session", str(path), "--", sys.executable, "-c", "raise SystemExit(7)"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert failed.returncode == 7  # the command's own exit code
