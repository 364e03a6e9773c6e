"""``RayHook``: the ``ray`` connection, resolved to a backend.

Connection forms:

* no connection, or extras ``{"backend": "local", "root_dir": …}``: the embedded local backend;
* host / port (and schema ``https``) of a Ray dashboard, token in the password, extras
  ``{"cluster_name": …, "verify": true | false | "/path/ca.pem", "allow_http": false}``: an existing
  cluster (jobs only); plain http only to this machine unless ``allow_http`` says so;
* extras ``{"backend": "kuberay", …}``: the KubeRay backend (its own options).

The hook turns a connection into a :class:`RayBackend` (``get_conn()`` / ``backend``) behind the
platform's authorization check (``authorization.AuthorizedBackend``, acting as the running task or the
actor it is given); every call on clusters and jobs goes to that backend, whose job calls are Ray's
``JobSubmissionClient``. Secrets (the connection password, cluster tokens) never leave the backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

from airflow.exceptions import AirflowNotFoundException
from airflow.sdk.bases.hook import BaseHook

from airflow_ray_platform import settings
from airflow_ray_platform.backends import get_backend
from airflow_ray_platform.backends.base import RayBackend
from airflow_ray_platform.records.lifecycle import LifecycleRecorder, read_job_log
from airflow_ray_platform.tenancy.authorization import (
    Action,
    AuditEntry,
    AuthorizationError,
    authorize,
    authorized,
)
from airflow_ray_platform.tenancy.policy import Actor, Policy, configured_policy


def current_actor(policy: Policy | None) -> Actor:
    """Who calls from here: the running Airflow task (its team by the policy), else an unidentified caller."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except RuntimeError:  # not inside a task: a script, a trigger that did not say who it acts for
        return Actor(None)
    return Actor.for_task(context, policy)


class RayHook(BaseHook):
    """The backend a ``ray`` connection names, behind the platform's authorization check.

    :param ray_conn_id: the ``ray`` connection; a missing ``ray_default`` means the local backend.
    :param actor: who acts through it (default: the running task, its team by the platform policy).
    :param audit: where decisions and actions are recorded (default: the ``[ray_platform]`` state store).
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

    def __init__(
        self,
        ray_conn_id: str = default_conn_name,
        actor: Actor | None = None,
        recorder: LifecycleRecorder | None = None,
        **kwargs: Any,
    ) -> None:
        """:param recorder: where decisions are audited and jobs' teams are looked up (default: the
        configured state store)."""
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id
        self._actor = actor
        self._recorder = recorder

    def get_conn(self) -> RayBackend:
        return self.backend

    @cached_property
    def policy(self) -> Policy | None:
        return configured_policy()

    @cached_property
    def actor(self) -> Actor:
        return self._actor or current_actor(self.policy)

    @cached_property
    def recorder(self) -> LifecycleRecorder:
        return self._recorder or LifecycleRecorder(settings.state_store_conn_id())

    @cached_property
    def backend(self) -> RayBackend:
        """The connection's backend; every action on a cluster through it is authorized and audited."""
        name, options = self.backend_spec()
        backend = get_backend(name, **options)
        recorder = self.recorder
        return authorized(backend, self.actor, self.policy, recorder.audit, recorder.job_team)  # type: ignore[return-value]

    def backend_spec(self) -> tuple[str, dict[str, Any]]:
        """(backend name, options) from the connection (on KubeRay, the policy's namespace for the team)."""
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
        team = self.policy.teams.get(self.actor.team or "") if self.policy is not None else None
        if name == "kuberay" and team is not None:
            extra.update(
                {
                    key: value
                    for key, value in (("namespace", team.namespace), ("kubernetes_conn_id", team.kubernetes_conn_id))
                    if value
                }
            )
        return name, extra

    def read_persisted_job_log(
        self, submission_id: str, state_store_conn_id: str | None = None, log_storage_uri: str | None = None
    ) -> str:
        """A finished job's whole driver log from log storage: readable after its cluster is gone (by the
        job's own team, under a platform policy)."""
        chunks = self.read_persisted_job_log_chunks(submission_id, state_store_conn_id, log_storage_uri)
        return b"".join(chunks).decode(errors="replace")

    def read_persisted_job_log_chunks(
        self, submission_id: str, state_store_conn_id: str | None = None, log_storage_uri: str | None = None
    ) -> Iterator[bytes]:
        """The same log in chunks, never whole in memory (authorized before the first chunk)."""

        def may_read(job_team: str | None) -> None:
            verdict = authorize(self.policy, self.actor, Action.READ_LOGS, "-", None, job_team)
            if self.policy is not None or not verdict.allowed:
                self.recorder.audit(
                    AuditEntry(self.actor, Action.READ_LOGS, "log-storage", "-", None, verdict, submission_id)
                )
            if not verdict.allowed:
                raise AuthorizationError(f"refused: {verdict.reason}")

        return read_job_log(submission_id, state_store_conn_id, log_storage_uri, may_read)
