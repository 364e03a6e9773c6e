"""Cluster cold start: the local backend (create + wait until ready) against a raw ``ray start --head``.

Both start one head with the same caps and token auth, alternating, several rounds. The raw baseline
is timed twice: until ``ray start`` returns, and until its Jobs API answers (what a job needs). The
local backend is timed in its sandbox (the default where the machine allows it) and without one
(``sandbox: off``), start and delete, so the sandbox's own cost is a ratio of the same run.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.backends.local.processes import free_ports
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench import WORK
from bench.common import median, record, timed

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SPEC = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})


def raw_ray_start(index: int) -> tuple[float, float]:
    token_path = WORK / f"raw-token-{index}"
    token_path.write_text(secrets.token_urlsafe(32))
    gcs, dashboard, client, manager, objects, agent, agent_grpc, runtime_env = free_ports(8)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-port",
        str(dashboard),
        "--dashboard-host",
        "127.0.0.1",
        "--ray-client-server-port",
        str(client),
        "--node-manager-port",
        str(manager),
        "--object-manager-port",
        str(objects),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        "0",
        "--num-cpus",
        "2",
        "--memory",
        str(2 * 1024**3),
        "--object-store-memory",
        str(200 * 1024**2),
        "--temp-dir",
        str(Path("/tmp") / f"arp-raw-{index}"),
        "--disable-usage-stats",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=WORK
    )
    process.wait()
    returned = time.perf_counter() - started
    request = urllib.request.Request(
        f"http://127.0.0.1:{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token_path.read_text()}"}
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                break
        except OSError:
            time.sleep(0.05)
    usable = time.perf_counter() - started
    _stop_session(process.pid)
    return returned, usable


def _stop_session(session_id: int) -> None:
    """Stop the raw cluster: every process still in the session ``ray start`` led."""
    import psutil

    members = [p for p in psutil.process_iter() if _sid(p.pid) == session_id]
    for process in members:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(members, timeout=10)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def local_backend_start(backend: LocalBackend, index: int) -> tuple[float, float]:
    """(create until ready, delete) of one cluster, in seconds."""
    name = f"cold-{index}"

    def start() -> None:
        backend.create_or_get_cluster(name, SPEC, {})
        wait_for_cluster(backend, name, timeout=300, poll_interval=0.1)

    elapsed = timed(start)
    return elapsed, timed(lambda: backend.delete_cluster(name))


def main() -> None:
    sandboxed, plain = LocalBackend(sandbox="required"), LocalBackend(sandbox="off")
    ours, ours_delete, unsandboxed, unsandboxed_delete, raw_returned, raw_usable = [], [], [], [], [], []
    for index in range(ROUNDS):
        ready, deleted = local_backend_start(sandboxed, index)
        ours.append(ready)
        ours_delete.append(deleted)
        ready, deleted = local_backend_start(plain, index)
        unsandboxed.append(ready)
        unsandboxed_delete.append(deleted)
        returned, usable = raw_ray_start(index)
        raw_returned.append(returned)
        raw_usable.append(usable)
    record(
        "cold_start",
        {
            "rounds": ROUNDS,
            "local_backend_ready_s": round(median(ours), 2),
            "local_backend_unsandboxed_ready_s": round(median(unsandboxed), 2),
            "raw_ray_start_returns_s": round(median(raw_returned), 2),
            "raw_ray_start_jobs_api_answers_s": round(median(raw_usable), 2),
            "ratio_vs_ray_start_returns": round(median(ours) / median(raw_returned), 3),
            "ratio_vs_jobs_api_answers": round(median(ours) / median(raw_usable), 3),
            "sandbox_start_ratio": round(median(ours) / median(unsandboxed), 3),
            "delete_s": round(median(ours_delete), 2),
            "unsandboxed_delete_s": round(median(unsandboxed_delete), 2),
            "target": "ratio <= 1.2",
            "samples": {
                "local_backend": [round(x, 2) for x in ours],
                "local_backend_unsandboxed": [round(x, 2) for x in unsandboxed],
                "raw_returns": [round(x, 2) for x in raw_returned],
                "raw_jobs_api": [round(x, 2) for x in raw_usable],
                "delete": [round(x, 2) for x in ours_delete],
                "unsandboxed_delete": [round(x, 2) for x in unsandboxed_delete],
            },
        },
    )


if __name__ == "__main__":
    main()
