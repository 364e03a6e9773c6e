"""What the platform's usage is estimated to cost: one price table and one formula.

The usage export (per job, column-wise), the Ray view's usage page (per team and day) and the
``ray_platform.usage.cost`` metric (per finished job) all price resource-hours the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Prices per hour; the usage export's ``prices`` param overrides them for its Parquet files.
DEFAULT_PRICES = {"cpu_hour": 0.04, "gpu_hour": 2.50, "memory_gib_hour": 0.005}


def estimated_cost(
    cpu_hours: float, gpu_hours: float, memory_gib_hours: float, prices: Mapping[str, float] = DEFAULT_PRICES
) -> float:
    """Resource-hours priced by ``prices`` (per CPU-hour, GPU-hour and GiB-hour of memory)."""
    return (
        cpu_hours * prices["cpu_hour"] + gpu_hours * prices["gpu_hour"] + memory_gib_hours * prices["memory_gib_hour"]
    )
