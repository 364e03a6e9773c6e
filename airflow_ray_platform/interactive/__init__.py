"""A cluster from a ``job_configuration`` for a notebook or a terminal, under the same rules as a DAG.

::

    from airflow_ray_platform.interactive import ray_cluster

    with ray_cluster("zone_training.yaml", team="forecasting") as cluster:
        cluster.init()                      # ray.init() on it, authenticated
        ...                                 # ray.remote as in the job

The configuration is validated and judged by the platform policy as a task's would be; the cluster is
created (or the existing one of that name got) and leased, every step recorded and audited as the
operating-system user. The lease holds until the block ends, or ``hold_for`` passes if the process dies
first; the cluster then stays for the DAGs and sessions that still hold it, and the cleanup DAG deletes it
after its ``idle_timeout``. ``airflow-ray session`` is the same from a terminal.
"""

from __future__ import annotations

from airflow_ray_platform.interactive.session import RaySession, ray_cluster

__all__ = ["RaySession", "ray_cluster"]
