"""Airflow provider for Ray: declarative ``job_configuration`` → Ray clusters and Ray jobs."""

from __future__ import annotations

from airflow_ray_platform import settings

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-ray-platform",
        "name": "Ray Platform",
        "description": "Ray clusters and Ray jobs from a declarative job_configuration, locally or on KubeRay.",
        "versions": [__version__],
        "connection-types": [{"connection-type": "ray", "hook-class-name": "airflow_ray_platform.hooks.ray.RayHook"}],
        "hooks": [{"integration-name": "Ray", "python-modules": ["airflow_ray_platform.hooks.ray"]}],
        "operators": [{"integration-name": "Ray", "python-modules": ["airflow_ray_platform.operators.ray"]}],
        "sensors": [{"integration-name": "Ray", "python-modules": ["airflow_ray_platform.sensors.ray"]}],
        "triggers": [{"integration-name": "Ray", "python-modules": ["airflow_ray_platform.triggers.ray"]}],
        "task-decorators": [{"name": "ray", "class-name": "airflow_ray_platform.decorators.ray.ray_task"}],
        "extra-links": ["airflow_ray_platform.links.RayDashboardLink", "airflow_ray_platform.links.RayJobRecordLink"],
        # The Ray view (clusters, jobs, logs, usage) in the UI: loaded by Airflow's plugins manager.
        "plugins": [
            {"name": "airflow_ray_platform", "plugin-class": "airflow_ray_platform.plugins.plugin.RayPlatformPlugin"}
        ],
        "integrations": [{"integration-name": "Ray", "external-doc-url": "https://docs.ray.io/"}],
        "config": {
            settings.SECTION: {"description": "Defaults of the Ray Platform operators.", "options": settings.OPTIONS}
        },
    }
