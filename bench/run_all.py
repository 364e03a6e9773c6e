"""Run every benchmark in its own process (each starts and stops its own clusters) into results.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "bench.import_cost",
    "bench.cold_start",
    "bench.control_plane",
    "bench.metrics_cost",
    "bench.task_ray",
    "bench.fan_out",
    "bench.lifecycle_ops",
    "bench.kuberay_manifests",
    "bench.kuberay_api_calls",
    "bench.deployment_latency",
    "bench.deferral_race",
    "bench.trigger_scale",
    "bench.detection_lag",
    "bench.record_queries",
    "bench.cli_overhead",
]

if __name__ == "__main__":
    for module in sys.argv[1:] or BENCHMARKS:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)
