"""Fan-out: N zones of ~50 ms CPU each, trained (a) serially, (b) as one Ray job of N Ray tasks on a
local cluster using every core, and (c) as N dynamically mapped Airflow tasks (the one-task-per-zone
pattern Ray replaces), all in one run.

Parallel efficiency = serial time / (cores x Ray time), where Ray time is the job's own wall time from
its first task to its last result (the driver's figure); the Ray job's submit -> SUCCEEDED time is
reported beside it, and so is the zones' own time measured inside their Ray tasks (against the serial
ms per zone it shows how much the cores shared with Ray's own processes slow each task). The mapped-task
baseline runs under dag.test(), one task after another, Airflow's lightest runner; its ideal with every
core busy (its time / cores) is reported too, and the ceiling no engine can pass on these cores
(mapped time / (serial time / cores)).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from bench.common import migrate_airflow_db, record

ZONES = int(os.environ.get("BENCH_ZONES", "1000"))
MAPPED_ZONES = int(os.environ.get("BENCH_MAPPED_ZONES", str(ZONES)))
TARGET_ZONE_SECONDS = 0.05
TRAINING = Path(__file__).parents[1] / "dags" / "zone_training"
sys.path.insert(0, str(TRAINING))

from train_zones import fit_zone  # noqa: E402


def calibrate() -> int:
    """Samples per zone that make one zone's training take about 50 ms on this machine."""
    samples = 2000
    for _ in range(3):
        fit_zone(0, samples=samples)
        started = time.perf_counter()
        for zone in range(10):
            fit_zone(zone, samples=samples)
        per_zone = (time.perf_counter() - started) / 10
        samples = max(500, int(samples * TARGET_ZONE_SECONDS / per_zone))
    return samples


def serial(samples: int) -> float:
    started = time.perf_counter()
    for zone in range(ZONES):
        fit_zone(zone, samples=samples)
    return time.perf_counter() - started


def ray_job(samples: int, cores: int) -> tuple[float, float, float]:
    """(driver wall, submit -> SUCCEEDED, sum of the zones' own times measured inside their Ray tasks)."""
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": str(cores), "memory": "3Gi", "object_store_memory": "300Mi"})
    backend.create_or_get_cluster("fan-out", spec, {})
    wait_for_cluster(backend, "fan-out", timeout=300, poll_interval=0.2)
    job = JobSpec(
        entrypoint=f"python train_zones.py --zones {ZONES} --samples {samples} --cpus-per-zone 1",
        runtime_env={"working_dir": str(TRAINING), "env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}},
    )
    try:
        started = time.perf_counter()
        backend.submit_job("fan-out", "fan-out-1", job, {})
        while not (info := backend.describe_job("fan-out", "fan-out-1")).state.is_terminal:
            time.sleep(0.1)
        end_to_end = time.perf_counter() - started
        assert info.state == "SUCCEEDED", info.message
        logs = backend.job_logs("fan-out", "fan-out-1")
        summary = json.loads(logs.split("SUMMARY ", 1)[1].splitlines()[0])
        assert summary["zones"] == ZONES
    finally:
        backend.delete_cluster("fan-out")
    return summary["wall_seconds"], end_to_end, summary["task_seconds"]


def mapped_tasks(samples: int) -> float:
    from bench.dags.bench_dags import bench_mapped_zones

    migrate_airflow_db()
    started = time.perf_counter()
    run = bench_mapped_zones.test(run_conf={"zones": MAPPED_ZONES, "samples": samples})
    elapsed = time.perf_counter() - started
    assert run.state == "success", run.state
    return elapsed * ZONES / MAPPED_ZONES


def main() -> None:
    cores = os.cpu_count() or 1
    samples = calibrate()
    serial_s = serial(samples)
    ray_wall, ray_end_to_end, ray_task_s = ray_job(samples, cores)
    mapped_s = mapped_tasks(samples)
    record(
        "fan_out",
        {
            "zones": ZONES,
            "cores": cores,
            "samples_per_zone": samples,
            "serial_ms_per_zone": round(1000 * serial_s / ZONES, 1),
            "serial_s": round(serial_s, 2),
            "ray_job_wall_s": round(ray_wall, 2),
            "ray_ms_per_zone_inside_task": round(1000 * ray_task_s / ZONES, 1),
            "ray_job_submit_to_succeeded_s": round(ray_end_to_end, 2),
            "parallel_efficiency": round(serial_s / (cores * ray_wall), 3),
            "parallel_efficiency_end_to_end": round(serial_s / (cores * ray_end_to_end), 3),
            "mapped_airflow_tasks_s": round(mapped_s, 1),
            "mapped_tasks_measured": MAPPED_ZONES,
            "speedup_vs_mapped_tasks": round(mapped_s / ray_end_to_end, 1),
            "speedup_vs_mapped_tasks_ideal_parallel": round(mapped_s / cores / ray_end_to_end, 1),
            # No parallel run can beat serial / cores: the most any engine could gain over the mapped tasks here.
            "speedup_ceiling_vs_mapped_tasks_on_these_cores": round(mapped_s / (serial_s / cores), 1),
            "target": "efficiency >= 0.85 of ideal on the available cores; >= 10x faster than mapped tasks",
        },
    )


if __name__ == "__main__":
    main()
