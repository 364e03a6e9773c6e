"""The ``job_configuration`` models under their public import path (they live in :mod:`.spec.models`).

DAGs import ``airflow_ray_platform.config.JobConfiguration``; this module keeps that path working. The
package itself imports :mod:`airflow_ray_platform.spec.models`.
"""

from airflow_ray_platform.spec.models import (
    ClusterSpec,
    HeadSpec,
    JobConfiguration,
    JobConfigurationError,
    JobSpec,
    LifecycleSpec,
    RuntimeEnv,
    Toleration,
    WorkerGroupSpec,
    load_job_configuration,
)

__all__ = [
    "ClusterSpec",
    "HeadSpec",
    "JobConfiguration",
    "JobConfigurationError",
    "JobSpec",
    "LifecycleSpec",
    "RuntimeEnv",
    "Toleration",
    "WorkerGroupSpec",
    "load_job_configuration",
]
