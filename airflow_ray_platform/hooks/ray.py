"""``RayHook``: the ``ray`` connection, resolved to a backend.

The connection forms are :mod:`~airflow_ray_platform.tenancy.connected`'s.

The hook turns a connection into a :class:`RayBackend` (``get_conn()`` / ``backend``) behind the
platform's authorization check (``authorization.AuthorizedBackend``, acting as the running task or the
actor it is given); every call on clusters and jobs goes to that backend, whose job calls are Ray's
``JobSubmissionClient``. Secrets (the connection password, cluster tokens) never leave the backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from airflow_ray_platform import settings
from airflow_ray_platform.backends.base import RayBackend
from airflow_ray_platform.records.lifecycle import LifecycleRecorder, read_job_log
from airflow_ray_platform.tenancy.authorization import (
    Action,
    AuditEntry,
    AuthorizationError,
    authorize,
)
from airflow_ray_platform.tenancy.connected import DEFAULT_RAY_CONN_ID, connected_backend
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
    default_conn_name = DEFAULT_RAY_CONN_ID
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
        recorder = self.recorder
        return connected_backend(self.ray_conn_id, self.actor, self.policy, recorder.audit, recorder.job_team)

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
