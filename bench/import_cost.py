"""Import cost of the provider's Airflow surface, against ``import airflow.sdk`` alone, in the same run.

What it stands for: every DAG-file parse and task start imports the operators, and Airflow's triggerer
imports a trigger class on its event loop (every other trigger waits meanwhile). Each round runs fresh
interpreters, interleaved: one importing ``airflow.sdk`` alone, one importing ``airflow.sdk`` then a
provider module under ``python -X importtime``; the provider's added cost is the cumulative import time
of its module once ``airflow.sdk`` is in (Airflow modules it pulls in beyond the SDK count against it).
Target: the provider adds at most 0.3 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.common import median, record

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MODULES = [
    "airflow_ray_platform.operators.ray",
    "airflow_ray_platform.triggers.ray",
    "airflow_ray_platform.sensors.ray",
]
TARGET_ADDED_S = 0.3


def cumulative_seconds(code: str, module: str) -> float:
    """The cumulative ``-X importtime`` figure of ``module`` in a fresh interpreter running ``code``."""
    stderr = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    ).stderr
    pattern = re.compile(rf"^import time:\s+\d+ \|\s+(\d+) \|\s*{re.escape(module)}$", re.MULTILINE)
    found = pattern.findall(stderr)
    if not found:
        raise RuntimeError(f"{module} not in the import-time report of {code!r}")
    return int(found[-1]) / 1e6


def main() -> None:
    sdk: list[float] = []
    added: dict[str, list[float]] = {module: [] for module in MODULES}
    for _ in range(ROUNDS):
        sdk.append(cumulative_seconds("import airflow.sdk", "airflow.sdk"))
        for module in MODULES:
            added[module].append(cumulative_seconds(f"import airflow.sdk; import {module}", module))
    sdk_s = median(sdk)
    worst = max(median(samples) for samples in added.values())
    record(
        "import_cost",
        {
            "airflow_sdk_s": round(sdk_s, 3),
            **{
                f"added_by_{module.split('.', 1)[1].replace('.', '_')}_s": round(median(added[module]), 3)
                for module in MODULES
            },
            "worst_added_s": round(worst, 3),
            "ratio_vs_airflow_sdk": round((sdk_s + worst) / sdk_s, 3),
            "rounds": ROUNDS,
            "samples": {
                "airflow.sdk": [round(v, 3) for v in sdk],
                **{m: [round(v, 3) for v in s] for m, s in added.items()},
            },
            "target": f"added <= {TARGET_ADDED_S} s over import airflow.sdk",
        },
    )


if __name__ == "__main__":
    main()
