"""``airflow-ray doctor``: is the platform set up right, one piece at a time, each with its fix.

When a task fails because the connection, the token, the state store, object storage or the sandbox is
wrong, the operator finds out from task logs, one failure at a time. The doctor asks each piece the way a
task would (through the same connection, store and storage code), says what it found and what to change,
and changes nothing but one probe object it writes to storage and deletes again. A check that depends
on one that failed is skipped, saying which.
"""

from __future__ import annotations

import enum
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but something will bite (a sandbox that is off, DAGs no team owns)
    FAIL = "fail"
    SKIP = "skip"  # not applicable here, or not checkable after an earlier failure


@dataclass(frozen=True)
class Check:
    """One piece of the platform: what was checked, the verdict, what was found, and the fix."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "verdict": str(self.verdict), "detail": self.detail, "fix": self.fix, **self.facts}


_AUTH_STATUS = re.compile(r"\b(401|403)\b|Unauthorized|Forbidden")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _refused_credentials(error: BaseException) -> bool:
    from airflow_ray_platform.backends.base import BackendAuthenticationError

    return isinstance(error, BackendAuthenticationError) or bool(_AUTH_STATUS.search(str(error)))


def _refusal(text: str) -> str:
    """A refusal named by its HTTP status, whichever way the backend worded it."""
    found = _AUTH_STATUS.search(text)
    unauthorized = found is not None and found.group(0) in ("401", "Unauthorized")
    return f"refused ({'401 Unauthorized' if unauthorized else '403 Forbidden'}): {text}"


def _auth_fix(backend_name: str) -> str:
    return {
        "dashboard": "set the connection's password to the cluster's Ray token (RAY_AUTH_TOKEN on its head)",
        "kuberay": "check the Kubernetes connection's credentials and the provider's Role "
        "(deploy/kuberay-rbac.yaml); with ray_auth: kubernetes, the jobs_api_service_account",
    }.get(backend_name, "check the cluster's Ray token")


# ------------------------------------------------------------------------------------------- the checks
def check_connection(conn_id: str, team: str | None) -> tuple[Check, Any]:
    """The ``ray`` connection resolves to a backend (and, under a policy, the team acting is named)."""
    from airflow_ray_platform import settings
    from airflow_ray_platform.connections import ConnectionNotFoundError
    from airflow_ray_platform.records.lifecycle import LifecycleRecorder
    from airflow_ray_platform.tenancy.connected import backend_spec, connected_backend, find_ray_connection
    from airflow_ray_platform.tenancy.policy import Actor, configured_policy

    try:
        actor, policy = Actor.outside_airflow(team, team_field="--team"), configured_policy()
        name, options = backend_spec(find_ray_connection(conn_id), policy, actor)
        recorder = LifecycleRecorder(settings.state_store_conn_id())  # audited as the hook audits
        backend = connected_backend(conn_id, actor, policy, recorder.audit, recorder.job_team)
    except ConnectionNotFoundError:
        fix = f"create the connection {conn_id!r} (conn_type ray), or pass --conn-id"
        return Check("connection", Verdict.FAIL, f"no Airflow connection {conn_id!r}", fix), None
    except Exception as error:
        fix = "correct the connection's extra (docs/connections.md lists each option)"
        return Check("connection", Verdict.FAIL, f"{conn_id!r}: {_one_line(error)}", fix), None
    shown = sorted(key for key in options if key not in ("token", "password"))
    detail = f"{conn_id!r}: the {name} backend" + (f" ({', '.join(shown)})" if shown else "")
    return Check("connection", Verdict.OK, detail, facts={"backend": name}), backend


def check_backend(backend: Any) -> tuple[Check, list[Any]]:
    """The backend answers: its clusters can be listed (a dashboard connection's one cluster reached)."""
    from airflow_ray_platform.backends.base import ClusterState

    try:
        clusters = backend.list_clusters()
    except Exception as error:
        if _refused_credentials(error):
            return Check("backend", Verdict.FAIL, _refusal(_one_line(error)), _auth_fix(backend.name)), []
        fix = "check that the backend's address is right and reachable from here"
        return Check("backend", Verdict.FAIL, f"unreachable: {_one_line(error)}", fix), []
    if backend.name == "dashboard":  # its one cluster is what it reaches; not READY: not reached
        (cluster,) = clusters
        if cluster.state == ClusterState.PROVISIONING:
            fix = "check the connection's host, port and scheme, and that the Ray dashboard runs there"
            return Check("backend", Verdict.FAIL, f"unreachable: {cluster.message}", fix), []
    ready = sum(1 for cluster in clusters if cluster.state == ClusterState.READY)
    return Check("backend", Verdict.OK, f"reachable: {len(clusters)} cluster(s), {ready} ready"), clusters


def check_authentication(backend: Any, clusters: list[Any]) -> Check:
    """The cluster takes our credentials: a Jobs API call on a ready cluster (named 401/403 if not)."""
    from airflow_ray_platform.backends.base import ClusterState
    from airflow_ray_platform.tenancy.authorization import AuthorizationError

    refused = [c for c in clusters if c.state == ClusterState.FAILED and c.message and _AUTH_STATUS.search(c.message)]
    if refused:
        detail = f"{refused[0].name}: {_refusal(refused[0].message or '')}"
        return Check("authentication", Verdict.FAIL, detail, _auth_fix(backend.name))
    ready = [cluster for cluster in clusters if cluster.state == ClusterState.READY]
    team = getattr(getattr(backend, "actor", None), "team", None)
    ready.sort(key=lambda cluster: cluster.team != team)  # the acting team's own first
    if not ready:
        return Check("authentication", Verdict.SKIP, "no ready cluster to authenticate against")
    try:
        jobs = backend.list_jobs(ready[0].name)
    except AuthorizationError:
        return Check("authentication", Verdict.SKIP, "no ready cluster of your team to authenticate against")
    except Exception as error:
        if _refused_credentials(error):
            detail = f"{ready[0].name}: {_refusal(_one_line(error))}"
            return Check("authentication", Verdict.FAIL, detail, _auth_fix(backend.name))
        return Check("authentication", Verdict.FAIL, f"{ready[0].name}: {_one_line(error)}", "see the backend's reason")
    return Check("authentication", Verdict.OK, f"{ready[0].name}: the Jobs API answered ({len(jobs)} job(s))")


def check_state_store(conn_id: str | None) -> Check:
    """The lifecycle state store is reachable and migrated to the provider's newest schema."""
    import sqlalchemy as sa

    from airflow_ray_platform.records.state_store import SCHEMA_REVISION, StateStore

    where = repr(conn_id) if conn_id else "the embedded SQLite file"
    try:
        store = StateStore.from_airflow_connection(conn_id)
        with store.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as error:
        fix = "check [ray_platform] state_store_conn_id and that its database server is reachable"
        return Check("state store", Verdict.FAIL, f"{where}: unreachable: {_one_line(error)}", fix)
    revision = store.schema_revision()
    if revision is not None and revision > SCHEMA_REVISION:
        detail = f"{where}: at schema {revision}, newer than this provider's {SCHEMA_REVISION}"
        fix = "a newer provider migrated it: upgrade airflow-ray-platform here to the same version"
        return Check("state store", Verdict.FAIL, detail, fix)
    if revision != SCHEMA_REVISION:
        found = "no schema yet" if revision is None else f"at schema {revision}"
        detail = f"{where}: reachable, {found}; the first task or command migrates it to {SCHEMA_REVISION}"
        fix = "to migrate now: airflow-ray clusters list (its database user needs to create tables)"
        return Check("state store", Verdict.WARN, detail, fix)
    return Check("state store", Verdict.OK, f"{where}: reachable, at schema {revision} (the newest)")


def check_object_storage(log_storage_uri: str | None) -> Check:
    """Finished jobs' logs can be written there and read back (one probe object, deleted again)."""
    from airflow_ray_platform.records.lifecycle import log_storage

    storage = log_storage(log_storage_uri)
    probe = f"airflow-ray-doctor/{socket.gethostname()}-{time.time_ns()}.txt".replace(" ", "_")
    content = b"airflow-ray doctor probe\n"
    try:
        uri = storage.write(probe, [content])
        try:
            read_back = b"".join(storage.read(uri))
        finally:
            storage.delete(uri)
    except Exception as error:
        fix = "check [ray_platform] log_storage_uri, the bucket, and the credentials (AWS_* or the s3 options)"
        return Check("object storage", Verdict.FAIL, f"{storage.base_uri}: {_one_line(error)}", fix)
    if read_back != content:
        return Check("object storage", Verdict.FAIL, f"{storage.base_uri}: read back other bytes than written")
    return Check("object storage", Verdict.OK, f"{storage.base_uri}: written, read back and deleted")


def check_sandbox(backend: Any, policy: Any) -> Check:
    """On the local backend: whether new clusters start in the sandbox (required by a team's policy?)."""
    from airflow_ray_platform.backends.base import SandboxingBackend

    inner = getattr(backend, "inner", backend)
    if not isinstance(inner, SandboxingBackend):
        return Check("sandbox", Verdict.SKIP, f"the {inner.name} backend isolates jobs its own way")
    why = inner.sandbox_refusal()
    if why is None:
        return Check("sandbox", Verdict.OK, "new local clusters start in the sandbox")
    requiring = [team for team in (policy.teams if policy else ()) if policy.allowances(team).requires_sandbox]
    fix = "let this user make namespaces (kernel.unprivileged_userns_clone, or a seccomp profile that allows them: "
    fix += "deploy/seccomp-ray-sandbox.json), or set the connection's sandbox option back to auto"
    if requiring:
        detail = f"unavailable ({why}), and the policy requires it for {requiring}: their clusters are refused"
        return Check("sandbox", Verdict.FAIL, detail, fix)
    return Check("sandbox", Verdict.WARN, f"unavailable: clusters start without it ({why})", fix)


def check_policy(dag_facts: Callable[[], list[Any]]) -> tuple[Check, Any]:
    """The platform policy parses, and which team each DAG Airflow knows would act as."""
    from airflow_ray_platform import settings
    from airflow_ray_platform.tenancy.policy import PolicyViolation, load_policy

    path = settings.policy_path()
    if not path:
        return Check(
            "policy", Verdict.OK, "no [ray_platform] policy: single-tenant, every DAG may use every cluster"
        ), None
    try:
        policy = load_policy(path)
    except Exception as error:
        return Check("policy", Verdict.FAIL, _one_line(error), "correct the file (docs/security.md)"), None
    try:
        dags = dag_facts()
    except Exception as error:
        detail = f"{path}: parses ({len(policy.teams)} team(s)); the DAGs cannot be listed: {_one_line(error)}"
        return Check("policy", Verdict.WARN, detail, "run where Airflow's metadata database is reachable"), policy
    teams: dict[str, str | None] = {}
    several = []
    for dag in dags:
        try:
            teams[dag.dag_id] = policy.team_of(dag)
        except PolicyViolation as violation:
            teams[dag.dag_id] = None
            if "several teams" in str(violation):
                several.append(dag.dag_id)
    matched = sum(1 for team in teams.values() if team)
    detail = f"{path}: {len(policy.teams)} team(s); {matched} of {len(teams)} DAG(s) matched to one team"
    facts = {"dag_teams": teams}
    if several:
        fix = "make the teams' match rules exclusive: a DAG matching several is refused"
        return Check("policy", Verdict.FAIL, f"{detail}; matching several: {several}", fix, facts), policy
    return Check("policy", Verdict.OK, detail, facts=facts), policy


def airflow_dags() -> list[Any]:
    """The DAGs in Airflow's metadata database, with what a team is matched on."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    from airflow_ray_platform.tenancy.policy import DagFacts

    with create_session() as session:
        rows = session.query(DagModel).all()
        return [
            DagFacts(
                row.dag_id,
                row.bundle_name,
                frozenset(tag.name for tag in row.tags),
                frozenset(owner.strip() for owner in (row.owners or "").split(",") if owner.strip()),
            )
            for row in rows
        ]


def run_checks(
    conn_id: str,
    state_store_conn_id: str | None,
    log_storage_uri: str | None,
    team: str | None,
    dag_facts: Callable[[], list[Any]] = airflow_dags,
) -> list[Check]:
    """Every check: the connection and the backend it names, the records, then isolation and the policy.
    A check that needs one that failed is skipped."""
    policy_check, policy = check_policy(dag_facts)
    connection, backend = check_connection(conn_id, team)
    checks = [connection]
    if backend is None:
        after = "the connection failed"
        checks += [Check(name, Verdict.SKIP, after) for name in ("backend", "authentication")]
    else:
        reached, clusters = check_backend(backend)
        checks.append(reached)
        if reached.verdict == Verdict.FAIL:
            checks.append(Check("authentication", Verdict.SKIP, "the backend is not reachable"))
        else:
            checks.append(check_authentication(backend, clusters))
    checks += [check_state_store(state_store_conn_id), check_object_storage(log_storage_uri)]
    checks += [check_sandbox(backend, policy) if backend is not None else Check("sandbox", Verdict.SKIP, after)]
    return [*checks, policy_check]
