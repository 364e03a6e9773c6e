"""The platform's settings, in one place: every ``[ray_platform]`` option and where the embedded defaults live.

:data:`OPTIONS` declares each option (type, default, description) exactly as ``get_provider_info()["config"]``
publishes it, so ``airflow config list`` shows all of them, and the readers below take their defaults from
the same declaration. Nothing else in the package calls ``conf.get``. Airflow's configuration is imported
only when an option is read, so importing this module costs nothing.

The local backend's registry, the SQLite state store and the ``file://`` object storage default to folders
under one root, ``$AIRFLOW_RAY_PLATFORM_HOME`` (else ``~/.airflow_ray_platform``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SECTION = "ray_platform"
DEFAULT_ROOT_ENV = "AIRFLOW_RAY_PLATFORM_HOME"

#: Every ``[ray_platform]`` option, as provider info declares it (``airflow config list`` shows these).
OPTIONS: dict[str, dict[str, Any]] = {
    "state_store_conn_id": {
        "description": "Connection of the lifecycle state store (unset: a SQLite file under the platform's root).",
        "version_added": "0.1.0",
        "type": "string",
        "example": "ray_platform_db",
        "default": None,
    },
    "log_storage_uri": {
        "description": "Where finished jobs' driver logs go: file://... or s3://bucket/prefix "
        "(unset: file:// under the platform's root).",
        "version_added": "0.1.0",
        "type": "string",
        "example": "s3://ray-logs/prod",
        "default": None,
    },
    "policy": {
        "description": "Path of the platform policy (YAML): teams, what identifies their DAGs, ceilings and "
        "allow-lists. Unset: single-tenant, every DAG may act on every cluster.",
        "version_added": "0.1.0",
        "type": "string",
        "example": "/opt/airflow/ray-policy.yaml",
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
    "cleanup_ray_conn_ids": {
        "description": "The ray connections the shipped cleanup DAG sweeps, comma-separated (configuration, "
        "not a DAG param: whoever triggers a run cannot point the sweep, or its audit, elsewhere).",
        "version_added": "0.1.0",
        "type": "string",
        "example": "ray_default,ray_kuberay",
        "default": "ray_default",
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
}


def _conf() -> Any:
    from airflow.configuration import conf

    return conf


def _text(key: str) -> str | None:
    """An option's text; unset or empty means its declared default."""
    return _conf().get(SECTION, key, fallback=None) or OPTIONS[key]["default"]


def state_store_conn_id() -> str | None:
    return _text("state_store_conn_id")


def log_storage_uri() -> str | None:
    return _text("log_storage_uri")


def policy_path() -> str | None:
    return _text("policy")


def cleanup_ray_conn_ids() -> list[str]:
    return [conn_id.strip() for conn_id in (_text("cleanup_ray_conn_ids") or "").split(",") if conn_id.strip()]


def validate_kuberay_manifests() -> bool:
    return _conf().getboolean(
        SECTION, "validate_kuberay_manifests", fallback=OPTIONS["validate_kuberay_manifests"]["default"] == "True"
    )


def deferral_settle_seconds() -> float:
    """The soonest a trigger fires after its task deferred (the operators also wait this long in the task
    before deferring). Airflow 3.3.2 fails a resumed task whose trigger fired before the scheduler had
    processed the deferring task process's exit: its guard for that case (``process_executor_events``,
    "resume-after-defer", apache/airflow#66374) accepts the task instance SCHEDULED, not yet QUEUED
    (apache/airflow#67287) or RUNNING (#71580, #72716), and that exit was measured up to ~6 s after the
    deferral on a loaded 2-core machine. 0 on an Airflow whose scheduler has the fix."""
    return _conf().getfloat(
        SECTION, "deferral_settle_seconds", fallback=float(OPTIONS["deferral_settle_seconds"]["default"])
    )


def default_deferrable() -> bool:
    """Airflow's own ``[operators] default_deferrable``: the operators' and sensor's ``deferrable`` default."""
    return _conf().getboolean("operators", "default_deferrable", fallback=False)


def multi_team() -> bool:
    """Airflow's own ``[core] multi_team``: whether the Ray view scopes what a user sees to their teams."""
    return _conf().getboolean("core", "multi_team", fallback=False)


def api_base_url() -> str:
    """Airflow's own ``[api] base_url``: where its UI (and the Ray view under it) is served."""
    return _conf().get("api", "base_url", fallback="/") or "/"


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV) or Path.home() / ".airflow_ray_platform")


def default_state_store_url() -> str:
    """The embedded state store: a SQLite file under the root."""
    return f"sqlite:///{default_root() / 'state.db'}"


def default_object_storage_uri() -> str:
    """Where persisted job logs go when ``[ray_platform] log_storage_uri`` is unset."""
    return f"file://{default_root() / 'logs'}"
