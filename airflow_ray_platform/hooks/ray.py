"""``RayHook``: the ``ray`` connection, resolved to a backend.

Connection forms:

* no connection, or extras ``{"backend": "local", "root_dir": …}``: the embedded local backend;
* host / port (and schema ``https``) of a Ray dashboard, token in the password, extras
  ``{"cluster_name": …, "verify": true | false | "/path/ca.pem", "allow_http": false}``: an existing
  cluster (jobs only); plain http only to this machine unless ``allow_http`` says so;
* extras ``{"backend": "kuberay", …}``: the KubeRay backend (its own options).

The hook only turns a connection into a :class:`RayBackend` (``get_conn()`` / ``backend``); every
call on clusters and jobs goes to that backend, whose job calls are Ray's ``JobSubmissionClient``.
Secrets (the connection password, cluster tokens) never leave the backend.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.exceptions import AirflowNotFoundException
from airflow.sdk.bases.hook import BaseHook

from airflow_ray_platform.backends import get_backend
from airflow_ray_platform.backends.base import RayBackend
from airflow_ray_platform.lifecycle import read_job_log


class RayHook(BaseHook):
    """The backend a ``ray`` connection names.

    :param ray_conn_id: the ``ray`` connection; a missing ``ray_default`` means the local backend.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {
                "host": "Ray dashboard host (empty for a backend named in Extra)",
                "port": "Ray dashboard port",
                "schema": "Scheme (http or https)",
                "password": "Ray cluster token",
            },
            "placeholders": {
                "extra": '{"backend": "local"} or {"backend": "kuberay", "kubernetes_conn_id": "kubernetes_default"}',
                "host": "ray-head.example.internal",
                "port": "8265",
            },
        }

    def __init__(self, ray_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id

    def get_conn(self) -> RayBackend:
        return self.backend

    @cached_property
    def backend(self) -> RayBackend:
        name, options = self.backend_spec()
        return get_backend(name, **options)

    def backend_spec(self) -> tuple[str, dict[str, Any]]:
        """(backend name, options) from the connection."""
        try:
            conn = self.get_connection(self.ray_conn_id)
        except AirflowNotFoundException:
            if self.ray_conn_id != self.default_conn_name:
                raise
            return "local", {}
        extra = dict(conn.extra_dejson)
        if conn.host:
            scheme = conn.schema or "http"
            address = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
            options = {"address": address, "token": conn.password or None}
            options.update({key: extra[key] for key in ("cluster_name", "verify", "allow_http") if key in extra})
            return "dashboard", options
        name = extra.pop("backend", "local")
        return name, extra

    def read_persisted_job_log(
        self, submission_id: str, state_store_conn_id: str | None = None, log_storage_uri: str | None = None
    ) -> str:
        """A finished job's whole driver log from log storage: readable after its cluster is gone."""
        return b"".join(read_job_log(submission_id, state_store_conn_id, log_storage_uri)).decode(errors="replace")
