"""Puts the shipped Airflow DAGs (../../dags) into the test DAG bundle, so dag.test() runs the real files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SHIPPED = Path(__file__).parents[2] / "dags"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"shipped_{name}", SHIPPED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


example_zone_training = _load("example_zone_training")
ray_cleanup_idle_clusters = _load("ray_cleanup_idle_clusters")
ray_usage_metrics_export = _load("ray_usage_metrics_export")
