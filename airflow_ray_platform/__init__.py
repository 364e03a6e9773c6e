"""Airflow provider for Ray: declarative ``job_configuration`` → Ray clusters and Ray jobs."""

from __future__ import annotations

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
        "extra-links": ["airflow_ray_platform.links.RayDashboardLink"],
        # The Ray view (clusters, jobs, logs, usage) in the UI: loaded by Airflow's plugins manager.
        "plugins": [{"name": "airflow_ray_platform", "plugin-class": "airflow_ray_platform.plugin.RayPlatformPlugin"}],
        "integrations": [{"integration-name": "Ray", "external-doc-url": "https://docs.ray.io/"}],
        "config": {
            "ray_platform": {
                "description": "Defaults of the Ray Platform operators.",
                "options": {
                    "state_store_conn_id": {
                        "description": "Connection of the lifecycle state store (unset: a SQLite file).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "ray_platform_db",
                        "default": None,
                    },
                    "log_storage_uri": {
                        "description": "Where finished jobs' driver logs go: file://... or s3://bucket/prefix.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://ray-logs/prod",
                        "default": None,
                    },
                    "validate_kuberay_manifests": {
                        "description": "At DAG parse, render each operator's KubeRay manifests and check them "
                        "strictly against the KubeRay CRD schemas (about 1.5 ms per operator).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "deferral_settle_seconds": {
                        "description": "How long a deferrable operator waits in its task before deferring, and "
                        "the soonest its trigger fires after the deferral: works around Airflow 3.3.2 failing a "
                        "task resumed right after its deferral (apache/airflow#67287). 0 where that is fixed.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "0",
                        "default": "10",
                    },
                },
            }
        },
    }
