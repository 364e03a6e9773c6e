"""Rendering and strictly validating 1,000 KubeRay manifests, against rendering alone (same run)."""

from __future__ import annotations

import os
import time

from airflow_ray_platform.backends.kuberay.manifests import render_ray_cluster, render_ray_job
from airflow_ray_platform.backends.kuberay.schema import validate_manifest
from airflow_ray_platform.spec.models import load_job_configuration
from bench.common import record

COUNT = int(os.environ.get("BENCH_MANIFESTS", "1000"))
CONFIG = load_job_configuration(
    {
        "name": "zones",
        "owner": "o",
        "team": "t",
        "cluster": {
            "ray_version": "2.60.0",
            "head": {"cpu": "2", "memory": "4Gi"},
            "autoscaling": True,
            "worker_groups": [
                {"group_name": "cpu", "replicas": 2, "max_replicas": 8, "cpu": "4", "memory": "8Gi"},
                {"group_name": "gpu", "replicas": 0, "max_replicas": 2, "gpu": 1, "memory": "16Gi"},
            ],
        },
        "job": {"entrypoint": "python train.py", "runtime_env": {"pip": ["numpy"]}, "timeout": 3600},
    }
)


def render(index: int) -> list[dict]:
    return [
        render_ray_cluster(f"c{index}", "ml", CONFIG.cluster, {"i": str(index)}, {}),
        render_ray_job(f"j{index}", "ml", CONFIG.job, {}, {}, {}, cluster_spec=CONFIG.cluster),
    ]


def main() -> None:
    for manifest in render(0):  # load and compile both CRD schemas once, outside the timing
        validate_manifest(manifest)
    started = time.perf_counter()
    for index in range(COUNT // 2):
        render(index)
    render_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(COUNT // 2):
        for manifest in render(index):
            validate_manifest(manifest)
    both_s = time.perf_counter() - started
    record(
        "kuberay_manifests",
        {
            "manifests": COUNT,
            "render_only_s": round(render_s, 3),
            "render_and_validate_s": round(both_s, 3),
            "validation_share": round(1 - render_s / both_s, 3),
            "per_manifest_ms": round(1000 * both_s / COUNT, 2),
        },
    )


if __name__ == "__main__":
    main()
