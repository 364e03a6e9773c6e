"""Kubernetes API calls per Ray job through the kuberay backend, against the emulated API server with
the simulated KubeRay controller (real Ray behind it): one RayJobOperator task on a named RayCluster
(reattach check, activity mark, RayJob create, wait, final reads, log persistence).

Each configuration runs a short and a long job: a wait that costs a constant number of calls gives
the same count for both. The baseline, in the same run, is the blocking operator, which polls every
``poll_interval`` (2 s): its count grows with the job's duration. Logs streamed into the task log
are read between waits (every 10 s on the deferrable path), so they add calls at a bounded rate.
"""

from __future__ import annotations

import json
import os

from airflow_ray_platform.backends.kuberay.backend import KubeRayBackend
from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.spec.models import ClusterSpec
from bench import WORK
from bench.common import migrate_airflow_db, record
from bench.dags import bench_dags
from bench.dags.bench_dags import BENCH_CLUSTER
from tests.kube_emulator.api_server import KubernetesApiEmulator
from tests.kube_emulator.kuberay_controller import SimulatedKubeRay
from tests.waiting import wait_for

DURATIONS = (2, 14)
CONFIGURATIONS = ("blocking", "deferrable", "blocking_logs", "deferrable_logs")


def run_job(emulator: KubernetesApiEmulator, dag_id: str, seconds: int) -> dict[str, float]:
    dag = getattr(bench_dags, dag_id)
    before = sum(emulator.requests.values())
    run = dag.test(run_conf={"seconds": seconds})
    ti = run.get_task_instance("job")
    assert ti.state == "success", ti.state
    return {"calls": sum(emulator.requests.values()) - before, "seconds": (ti.end_date - ti.start_date).total_seconds()}


def main() -> None:
    migrate_airflow_db()
    local = LocalBackend()
    emulator = KubernetesApiEmulator().start()
    kubeconfig = emulator.write_kubeconfig(WORK / "kubeconfig.json")
    os.environ["AIRFLOW_CONN_KUBERNETES_BENCH"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "namespace": "default"}}
    )
    os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(
        {"conn_type": "ray", "extra": {"backend": "kuberay", "kubernetes_conn_id": "kubernetes_bench"}}
    )
    controller = SimulatedKubeRay(emulator, local).start()
    backend = KubeRayBackend("kubernetes_bench")
    try:
        spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
        backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
        wait_for(lambda: backend.describe_cluster(BENCH_CLUSTER).state == "READY", timeout=300, interval=0.5)
        run_job(emulator, "bench_kuberay_blocking", 1)  # warm-up: the first job starts Ray's workers
        results = {
            name: {f"{seconds}s_job": run_job(emulator, f"bench_kuberay_{name}", seconds) for seconds in DURATIONS}
            for name in CONFIGURATIONS
        }
        assert controller.errors == [], controller.errors
    finally:
        controller.stop()
        emulator.stop()
        local.delete_cluster(BENCH_CLUSTER)
    short, long = (f"{seconds}s_job" for seconds in DURATIONS)
    growth = {name: results[name][long]["calls"] - results[name][short]["calls"] for name in CONFIGURATIONS}
    record(
        "kuberay_api_calls_per_job",
        {
            "job_durations_s": list(DURATIONS),
            "per_configuration": results,
            "extra_calls_for_the_longer_job": growth,
            "deferrable_vs_blocking_calls_long_job": round(
                results["deferrable"][long]["calls"] / results["blocking"][long]["calls"], 2
            ),
            "constant_without_log_streaming": growth["deferrable"] == 0,
        },
    )


if __name__ == "__main__":
    main()
