"""The backend a ``ray`` connection names, for one caller, behind the platform's authorization check.

One answer for every way in (the hook in a task or trigger, the CLI, a notebook session, ``doctor``):

* no connection ``ray_default``, or extras ``{"backend": "local", "root_dir": …}``: the embedded local backend;
* a host (and port, and schema ``https``) of a Ray dashboard, the cluster's token in the password, extras
  ``{"cluster_name": …, "verify": …, "allow_http": …}``: an existing cluster, jobs only;
* extras ``{"backend": "kuberay", …}``: KubeRay, in the namespace (and through the Kubernetes connection)
  the platform policy gives the caller's team.
"""

from __future__ import annotations

from typing import Any

from airflow_ray_platform.backends import get_backend
from airflow_ray_platform.backends.base import RayBackend
from airflow_ray_platform.connections import ConnectionFields, ConnectionNotFoundError, get_connection
from airflow_ray_platform.tenancy.authorization import AuditSink, JobTeams, authorized
from airflow_ray_platform.tenancy.policy import Actor, Policy

#: The connection a missing ``ray_conn_id`` means; absent, the embedded local backend.
DEFAULT_RAY_CONN_ID = "ray_default"


def find_ray_connection(conn_id: str) -> ConnectionFields | None:
    """The ``ray`` connection; None for an absent ``ray_default`` (the local backend), else not found raises."""
    try:
        return get_connection(conn_id)
    except ConnectionNotFoundError:
        if conn_id != DEFAULT_RAY_CONN_ID:
            raise
        return None


def backend_spec(conn: ConnectionFields | None, policy: Policy | None, actor: Actor) -> tuple[str, dict[str, Any]]:
    """(backend name, options) from the connection (on KubeRay, the policy's namespace for the team)."""
    if conn is None:
        return "local", {}
    extra = dict(conn.extra)
    if conn.host:
        scheme = conn.schema or "http"
        address = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
        options = {"address": address, "token": conn.password or None}
        options.update({key: extra[key] for key in ("cluster_name", "verify", "allow_http") if key in extra})
        return "dashboard", options
    name = extra.pop("backend", "local")
    team = policy.teams.get(actor.team or "") if policy is not None else None
    if name == "kuberay" and team is not None:
        extra.update(
            {
                key: value
                for key, value in (("namespace", team.namespace), ("kubernetes_conn_id", team.kubernetes_conn_id))
                if value
            }
        )
    return name, extra


def connected_backend(
    conn_id: str,
    actor: Actor,
    policy: Policy | None,
    audit: AuditSink | None,
    job_teams: JobTeams | None,
) -> RayBackend:
    """The backend ``conn_id`` names, every action on a cluster through it authorized for ``actor`` and audited."""
    name, options = backend_spec(find_ray_connection(conn_id), policy, actor)
    return authorized(get_backend(name, **options), actor, policy, audit, job_teams)  # type: ignore[return-value]
