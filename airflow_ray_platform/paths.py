"""Where the embedded defaults live on disk, in one place.

The local backend's registry, the SQLite state store and the ``file://`` object storage all default to
folders under one root, ``$AIRFLOW_RAY_PLATFORM_HOME`` (else ``~/.airflow_ray_platform``). Keeping the
rule here lets the record layer find its defaults without importing a backend.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT_ENV = "AIRFLOW_RAY_PLATFORM_HOME"


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV) or Path.home() / ".airflow_ray_platform")


def default_state_store_url() -> str:
    """The embedded state store: a SQLite file under the root."""
    return f"sqlite:///{default_root() / 'state.db'}"


def default_object_storage_uri() -> str:
    """Where persisted job logs go when ``[ray_platform] log_storage_uri`` is unset."""
    return f"file://{default_root() / 'logs'}"
