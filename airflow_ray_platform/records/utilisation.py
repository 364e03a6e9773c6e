"""Measured CPU / GPU utilisation of a cluster's nodes, from Ray's own Prometheus metrics.

Every Ray node serves Prometheus text on its metrics export port; Ray's reporter publishes
``ray_node_cpu_utilization`` (percent of the node's CPUs: the machine locally, the pod's container on
Kubernetes) and, on GPU nodes, ``ray_node_gpus_utilization`` (percent per GPU). While a job runs,
the operator (or its trigger) samples them each time it checks the job; the job's row then holds
the mean of the samples. Where no endpoint is reachable, nothing is recorded and the usage export's
columns stay null: a number is never invented.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

CPU_METRIC = "ray_node_cpu_utilization"
GPU_METRIC = "ray_node_gpus_utilization"
#: The lines of Prometheus text that hold the two metrics: their samples and their ``# HELP``/``# TYPE``.
_WANTED = re.compile(rf"(# (HELP|TYPE) )?({CPU_METRIC}|{GPU_METRIC})[{{ ]")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def scrape(urls: Iterable[str], timeout: float = 2.0) -> tuple[float | None, float | None]:
    """(mean CPU %, mean GPU %) over the nodes that answered; (None, None) when none did."""
    from prometheus_client.parser import text_string_to_metric_families  # only while a job runs

    cpu: list[float] = []
    gpu: list[float] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                text = response.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError):
            continue
        # A node serves thousands of samples; parsing all of them cost ~0.3 s a scrape, these two ~1 ms.
        wanted = "".join(line for line in text.splitlines(keepends=True) if _WANTED.match(line))
        for family in text_string_to_metric_families(wanted):
            for sample in family.samples:
                if sample.name == CPU_METRIC:
                    cpu.append(sample.value)
                elif sample.name == GPU_METRIC:
                    gpu.append(sample.value)
    return _mean(cpu), _mean(gpu)


@dataclass
class Utilisation:
    """Running sums of samples; travels in a trigger's state and events as a plain dict."""

    cpu_sum: float = 0.0
    cpu_samples: int = 0
    gpu_sum: float = 0.0
    gpu_samples: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Utilisation:
        return cls(**(data or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, sample: tuple[float | None, float | None]) -> None:
        cpu, gpu = sample
        if cpu is not None:
            self.cpu_sum += cpu
            self.cpu_samples += 1
        if gpu is not None:
            self.gpu_sum += gpu
            self.gpu_samples += 1

    @property
    def cpu_percent(self) -> float | None:
        return self.cpu_sum / self.cpu_samples if self.cpu_samples else None

    @property
    def gpu_percent(self) -> float | None:
        return self.gpu_sum / self.gpu_samples if self.gpu_samples else None
