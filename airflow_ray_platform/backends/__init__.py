"""Where clusters live: one interface (:mod:`.base`), one module per backend."""

from __future__ import annotations

from typing import Any

from airflow_ray_platform.backends.base import RayBackend

#: Backend name -> "module:Class". Imported lazily: the kuberay backend pulls in Kubernetes clients.
BACKENDS = {
    "local": "airflow_ray_platform.backends.local:LocalBackend",
    "dashboard": "airflow_ray_platform.backends.dashboard:DashboardBackend",
    "kuberay": "airflow_ray_platform.backends.kuberay.backend:KubeRayBackend",
}


def get_backend(name: str, **options: Any) -> RayBackend:
    """Instantiate a backend by name with its options (from the ``ray`` connection's extras)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown Ray backend {name!r}; known backends: {sorted(BACKENDS)}") from None
    module_name, class_name = target.split(":")
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)(**options)
