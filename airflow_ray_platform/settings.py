"""The platform's settings, in one place: every ``[ray_platform]`` option and where the embedded defaults live.

:data:`OPTIONS` declares each option (type, default, description) exactly as ``get_provider_info()["config"]``
publishes it, so ``airflow config list`` shows all of them, and the readers below take their defaults from
the same declaration. Nothing else in the package calls ``conf.get``. Importing this module costs nothing.

In a process that already runs Airflow, options are read through Airflow's configuration. Outside one
(the ``airflow-ray`` CLI, a notebook), where importing Airflow would cost seconds, they are read from the
same places Airflow reads them, in its order: the environment (``AIRFLOW__SECTION__KEY``), then the
configuration file (``$AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME/airflow.cfg``), then the declared default.
An option given any other way (``_cmd``, ``_secret``) is read through Airflow's configuration after all.

The local backend's registry, the SQLite state store and the ``file://`` object storage default to folders
under one root, ``$AIRFLOW_RAY_PLATFORM_HOME`` (else ``~/.airflow_ray_platform``).
"""

from __future__ import annotations

import configparser
import os
import sys
from functools import cache
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
        "description": "The soonest a deferred operator's trigger fires after the deferral (the task "
        "itself defers after one look): Airflow up to at least 3.3.2 fails a task resumed before its "
        "scheduler has processed the deferring process's exit (apache/airflow#67287, #71580). The race "
        "window measured under a backfill (up to 6.8 s), plus a margin; 0 on an Airflow whose "
        "scheduler guards QUEUED and RUNNING too (docs/operations.md).",
        "version_added": "0.1.0",
        "type": "float",
        "example": "0",
        "default": "9",
    },
}


def _airflow_conf() -> Any:
    from airflow.configuration import conf

    return conf


def _conf() -> Any:
    """Airflow's configuration where Airflow is loaded already, else what :class:`_FileAndEnvironment` reads."""
    return _airflow_conf() if "airflow" in sys.modules else _file_and_environment()


def _expand(value: str) -> str:
    """A configuration file's value as Airflow expands it (``~`` and ``$VARIABLES``, until stable)."""
    while (expanded := os.path.expandvars(os.path.expanduser(value))) != value:
        value = expanded
    return value


def airflow_home() -> Path:
    """Airflow's home as Airflow finds it (``$AIRFLOW_HOME``, else ``~/airflow``)."""
    return Path(_expand(os.environ.get("AIRFLOW_HOME") or "~/airflow"))


def airflow_config_path() -> Path:
    """Airflow's configuration file as Airflow finds it (``$AIRFLOW_CONFIG``, else in its home)."""
    return Path(_expand(os.environ.get("AIRFLOW_CONFIG") or str(airflow_home() / "airflow.cfg")))


class _FileAndEnvironment:
    """Airflow's options read as Airflow reads them, without importing Airflow (see the module's doc)."""

    _TRUE, _FALSE = ("t", "true", "1"), ("f", "false", "0")

    def __init__(self) -> None:
        self._file = configparser.ConfigParser(interpolation=None, strict=False)
        self._file.read(airflow_config_path())

    def get(self, section: str, key: str, fallback: Any = None) -> Any:
        variable = f"AIRFLOW__{section.upper()}__{key.upper()}"
        if variable in os.environ:
            return os.environ[variable]
        if any(f"{variable}_{form}" in os.environ for form in ("CMD", "SECRET")) or any(
            self._file.has_option(section, f"{key}_{form}") for form in ("cmd", "secret")
        ):
            return _airflow_conf().get(section, key, fallback=fallback)
        if self._file.has_option(section, key):
            return _expand(self._file.get(section, key))
        return fallback

    def getboolean(self, section: str, key: str, fallback: bool = False) -> bool:
        value = self.get(section, key)
        if value is None:
            return fallback
        text = str(value).split("#")[0].strip().lower()
        if text not in self._TRUE + self._FALSE:
            raise ValueError(f"[{section}] {key}: {value!r} is not a boolean (true or false)")
        return text in self._TRUE

    def getfloat(self, section: str, key: str, fallback: float = 0.0) -> float:
        value = self.get(section, key)
        try:
            return fallback if value is None else float(value)
        except ValueError:
            raise ValueError(f"[{section}] {key}: {value!r} is not a number") from None


@cache
def _file_and_environment() -> _FileAndEnvironment:
    return _FileAndEnvironment()


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
    """The soonest a trigger fires after its task deferred. Airflow 3.3.2 fails a resumed task whose
    trigger fired before the scheduler had processed the deferring task process's exit: its guard for
    that case (``process_executor_events``, "resume-after-defer", apache/airflow#66374) accepts the task
    instance SCHEDULED, not yet QUEUED (apache/airflow#67287) or RUNNING (#71580, #72716). No state a
    task or trigger can read says the exit was processed (the scheduler keeps it in memory), so this is
    the window measured by ``bench/deferral_race.py`` plus a margin. 0 on an Airflow with the fix."""
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


def metrics_enabled() -> bool:
    """Whether Airflow sends metrics from this process: ``[metrics]`` StatsD, Datadog or OpenTelemetry on
    (Airflow's own choice among them, ``get_stats_factory``; off, its stats client drops everything)."""
    return any(_conf().getboolean("metrics", key, fallback=False) for key in _METRICS_SWITCHES)


_METRICS_SWITCHES = ("statsd_datadog_enabled", "statsd_on", "otel_on")


def custom_secrets_backend() -> str | None:
    """Airflow's own ``[secrets] backend``: searched for connections before anything else."""
    return _conf().get("secrets", "backend", fallback=None) or None


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV) or Path.home() / ".airflow_ray_platform")


def default_state_store_url() -> str:
    """The embedded state store: a SQLite file under the root."""
    return f"sqlite:///{default_root() / 'state.db'}"


def default_object_storage_uri() -> str:
    """Where persisted job logs go when ``[ray_platform] log_storage_uri`` is unset."""
    return f"file://{default_root() / 'logs'}"
