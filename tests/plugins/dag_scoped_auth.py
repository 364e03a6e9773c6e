"""An auth manager with DAG-level permissions for the Ray view's tests: Airflow's SimpleAuthManager gives
every role every DAG, so this one adds one rule, as FAB's per-DAG permissions would: a user named
``reader-of-<dag id>`` may read that DAG alone."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

READER_PREFIX = "reader-of-"


class DagScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        name = user.get_name()
        if name.startswith(READER_PREFIX):
            return method == "GET" and details is not None and details.id == name.removeprefix(READER_PREFIX)
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
