"""Where clusters live: one interface (:mod:`.base`), one module per backend."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from airflow_ray_platform.backends.base import RayBackend

if TYPE_CHECKING:
    from airflow_ray_platform.spec.models import JobConfiguration

#: Backend name -> "module:Class". Imported lazily: the kuberay backend pulls in Kubernetes clients.
BACKENDS = {
    "local": "airflow_ray_platform.backends.local.backend:LocalBackend",
    "dashboard": "airflow_ray_platform.backends.dashboard:DashboardBackend",
    "kuberay": "airflow_ray_platform.backends.kuberay.backend:KubeRayBackend",
}


#: Backend name -> "module:function" checking a configuration for that backend with no connection at all
#: (DAG parse); each backend's ``validate_configuration`` method calls the same function.
OFFLINE_CHECKS = {
    "kuberay": "airflow_ray_platform.backends.kuberay.manifests:validate_configuration_manifests",
}


def _load(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(import_module(module_name), attribute)


def validate_configuration_offline(name: str, config: JobConfiguration) -> None:
    """What ``name``'s backend would check of ``config`` beyond the model, without reaching it."""
    if name in OFFLINE_CHECKS:
        _load(OFFLINE_CHECKS[name])(config)


def get_backend(name: str, **options: Any) -> RayBackend:
    """Instantiate a backend by name with its options (from the ``ray`` connection's extras)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown Ray backend {name!r}; known backends: {sorted(BACKENDS)}") from None
    return _load(target)(**options)
