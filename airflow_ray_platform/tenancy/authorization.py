"""One authorization check in front of the backend contract, and the audit of every decision.

Every caller of a backend (the job run behind the operators, triggers and sensor, a run's teardown,
garbage collection) gets it from the hook, which puts :class:`AuthorizedBackend` in front of it: so
create or get, taking a lease, submit, reading status or logs, stop and delete are each checked here,
once, before the backend is asked, and a refusal changes nothing. :func:`authorize` is the rule, pure:

* without a platform policy the provider is single-tenant: everything is allowed, but
* a cluster the provider does not manage is never deleted through it, policy or not;
* with a policy, a team acts on its own clusters; a cluster's ``admit_teams`` may use it (submit,
  lease) but read and stop only their own jobs on it and never delete it; clusters no team owns are
  for the policy's ``unowned_cluster_teams``; the cleanup DAG deletes any team's idle managed
  cluster and stops abandoned jobs, and submits nothing.

Each decision of a policy (allowed or refused), and every create, submit, stop and delete even
without one, goes to the audit sink (the lifecycle state store's ``arp_events``) with the actor.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_ray_platform.backends.base import (
    BackendError,
    BulkJobListing,
    ClusterInfo,
    DeleteCondition,
    IncrementalLogs,
    JobInfo,
    Lease,
    RayBackend,
    RayConnection,
    SandboxingBackend,
    WatchingBackend,
)
from airflow_ray_platform.spec.models import ClusterSpec, JobConfiguration, JobSpec
from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEAM_LABEL, TEAM_METADATA
from airflow_ray_platform.tenancy.policy import Actor, Policy


class Action(enum.StrEnum):
    RUN = "run"  # a task's configuration under the policy: its team, ceilings, allow-lists
    CREATE = "create"
    USE = "use"  # get, lease, read status, submit's precondition
    SUBMIT = "submit"
    READ_LOGS = "read_logs"
    STOP = "stop"
    RELEASE = "release"
    DELETE = "delete"
    CONNECT = "connect"  # hand a Ray client the cluster's address and token (an interactive session)

    @property
    def phrase(self) -> str:
        """The action in a refusal: "team 'a' may not <phrase> Ray cluster 'c'"."""
        return _PHRASES[self]


_PHRASES = {
    Action.RUN: "run on",
    Action.CREATE: "create",
    Action.USE: "use",
    Action.SUBMIT: "submit jobs to",
    Action.READ_LOGS: "read job logs on",
    Action.STOP: "stop jobs on",
    Action.RELEASE: "release leases on",
    Action.DELETE: "delete",
    Action.CONNECT: "connect a Ray client to",
}


#: Recorded even without a policy: what changes a cluster or a job.
#: Checked and audited every time: they change something, or hand out a credential.
MUTATING_ACTIONS = frozenset({Action.CREATE, Action.SUBMIT, Action.STOP, Action.DELETE, Action.CONNECT})
#: What a team admitted to another team's cluster may do there.
ADMITTED_ACTIONS = frozenset({Action.USE, Action.SUBMIT, Action.RELEASE})
#: What a team under ``sandbox: required`` may do only on a sandboxed cluster.
SANDBOXED_ACTIONS = frozenset({Action.USE, Action.SUBMIT, Action.CONNECT})
#: What the cleanup DAG may do on any team's cluster.
CLEANUP_ACTIONS = frozenset({Action.USE, Action.READ_LOGS, Action.STOP, Action.RELEASE, Action.DELETE})


def presented_token(backend: RayBackend, cluster_name: str) -> str | None:
    """The token this process authenticates to the cluster with, to keep it out of what a job hands back:
    read past the authorization wrapper (it never leaves the process, so it is neither an action nor
    audited); None if the cluster cannot say."""
    inner = backend.inner if isinstance(backend, AuthorizedBackend) else backend
    try:
        return inner.connection(cluster_name).token
    except BackendError:
        return None


class AuthorizationError(BackendError):
    """The actor may not do this; nothing was changed."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def _managed(cluster: ClusterInfo) -> bool:
    return cluster.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def admitted_teams(cluster: ClusterInfo) -> tuple[str, ...]:
    """The teams a cluster's spec admits besides its own (``cluster.admit_teams``)."""
    return tuple((cluster.spec or {}).get("admit_teams") or ())


def authorize(
    policy: Policy | None,
    actor: Actor,
    action: Action,
    cluster_name: str,
    cluster: ClusterInfo | None,
    job_team: str | None = None,
) -> Verdict:
    """May ``actor`` do ``action`` on cluster ``cluster_name`` (``cluster``: None if it does not exist yet;
    ``job_team``: the team of the job a log read or stop is about)?"""
    if action == Action.DELETE and cluster is not None and not _managed(cluster):
        return Verdict(
            False,
            f"{actor} may not delete Ray cluster {cluster_name!r}: airflow-ray-platform does not "
            "manage it (it never deletes what it did not create)",
        )
    if policy is None:
        return Verdict(True, "no platform policy: single-tenant")
    if actor.cleanup:
        if action in CLEANUP_ACTIONS:
            return Verdict(True, "the cleanup DAG garbage-collects every team's clusters")
        return Verdict(False, f"{actor} may not {action.phrase} Ray cluster {cluster_name!r}: it only garbage-collects")
    team = actor.team
    if team is None:
        return Verdict(False, f"{actor} may not {action.phrase} Ray cluster {cluster_name!r}: it works for no team")
    if cluster is None:
        if action == Action.CREATE:
            return Verdict(True, f"team {team!r} creates its own cluster")
        if action == Action.READ_LOGS:  # a persisted log, its cluster gone: the job's team reads it
            if job_team == team:
                return Verdict(True, "its own job's persisted log")
            return Verdict(False, f"team {team!r} may not read the log of a job of team {job_team!r}")
        return Verdict(True, "no such cluster: nothing to protect")
    owner = cluster.team
    admits = admitted_teams(cluster)
    if owner is None:
        if team in policy.unowned_cluster_teams and action != Action.DELETE:
            return Verdict(True, f"team {team!r} may use clusters no team owns")
        return Verdict(
            False,
            f"team {team!r} may not {action.phrase} Ray cluster {cluster_name!r}: no team owns it and "
            "the policy's unowned_cluster_teams does not name this one",
        )
    if action in SANDBOXED_ACTIONS and cluster.sandboxed is False and _requires_sandbox(policy, team):
        return Verdict(
            False,
            f"team {team!r} may not {action.phrase} Ray cluster {cluster_name!r}: it runs outside the local "
            "backend's sandbox, which the policy requires for this team (sandbox: required)",
        )
    if owner == team:
        return Verdict(True, f"team {team!r} owns the cluster")
    if team in admits:
        if action in ADMITTED_ACTIONS:
            return Verdict(True, f"team {owner!r}'s cluster admits team {team!r}")
        if action in (Action.READ_LOGS, Action.STOP) and job_team == team:
            return Verdict(True, f"team {team!r}'s own job on team {owner!r}'s cluster")
    shown = f" (admits {list(admits)})" if admits else ""
    return Verdict(
        False,
        f"team {team!r} may not {action.phrase} Ray cluster {cluster_name!r}: it belongs to team {owner!r}{shown}",
    )


def _requires_sandbox(policy: Policy, team: str) -> bool:
    return team in policy.teams and policy.allowances(team).requires_sandbox


@dataclass(frozen=True)
class AuditEntry:
    """One decision, as the audit trail keeps it."""

    actor: Actor
    action: Action
    backend: str
    cluster_name: str
    cluster: ClusterInfo | None
    verdict: Verdict
    submission_id: str | None = None


AuditSink = Callable[[AuditEntry], None]
#: The team the provider's records give a job (by submission id), None when it has no record of it.
JobTeams = Callable[[str], "str | None"]


class AuthorizedBackend:
    """A :class:`RayBackend` whose every action on a cluster is first authorized (and audited).

    The verdict on one (action, cluster) holds for this instance's life, so a wait that polls a job
    is checked once, not on every poll. Listing and describing clusters are not actions: they return
    no credential and change nothing.
    """

    def __init__(
        self,
        backend: RayBackend,
        actor: Actor,
        policy: Policy | None,
        audit: AuditSink | None,
        job_teams: JobTeams | None = None,
    ) -> None:
        self.inner = backend
        self.actor = actor
        self.policy = policy
        self.audit = audit
        self.job_teams = job_teams
        self._verdicts: dict[tuple[Action, str, str | None], Verdict] = {}
        self._job_teams: dict[str, str | None] = {}
        self._readable_jobs: set[tuple[str, str]] = set()

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def _check(
        self,
        action: Action,
        cluster_name: str,
        submission_id: str | None = None,
        job_team: str | None = None,
        *,
        cluster: ClusterInfo | None = None,
        described: bool = False,
    ) -> None:
        """Raise AuthorizationError unless allowed. ``described``: ``cluster`` is what was just read (else
        it is read here, unless an earlier verdict on the same question stands and nothing is changed)."""
        key = (action, cluster_name, job_team)
        verdict = self._verdicts.get(key)
        mutating = action in MUTATING_ACTIONS
        if verdict is not None and verdict.allowed and not mutating:
            return
        if self.policy is None and not mutating:  # single-tenant: reading needs no look at the cluster
            self._verdicts[key] = Verdict(True, "no platform policy: single-tenant")
            return
        if not described:
            cluster = self.inner.describe_cluster(cluster_name)
        verdict = authorize(self.policy, self.actor, action, cluster_name, cluster, job_team)
        first = key not in self._verdicts
        self._verdicts[key] = verdict
        if self.audit is not None and (mutating or not verdict.allowed or (first and self.policy is not None)):
            self.audit(AuditEntry(self.actor, action, self.inner.name, cluster_name, cluster, verdict, submission_id))
        if not verdict.allowed:
            raise AuthorizationError(f"refused: {verdict.reason}")

    def _check_sandbox_possible(self, name: str) -> None:
        """Under ``sandbox: required``, refuse (and audit) a create that would start outside the sandbox,
        before anything starts."""
        team = self.actor.team
        if self.policy is None or team is None or not _requires_sandbox(self.policy, team):
            return
        why = self.inner.sandbox_refusal() if isinstance(self.inner, SandboxingBackend) else None
        if why is None:
            return
        verdict = Verdict(
            False,
            f"team {team!r} may not create Ray cluster {name!r} outside the local backend's sandbox, which the "
            f"policy requires for this team (sandbox: required), and none can be made here: {why}",
        )
        if self.audit is not None:
            self.audit(AuditEntry(self.actor, Action.CREATE, self.inner.name, name, None, verdict))
        raise AuthorizationError(f"refused: {verdict.reason}")

    def _job_team(self, submission_id: str) -> str | None:
        """From the provider's records, never from the job's metadata (anyone with the cluster's token
        writes that); no record, no team: only the cluster's owner touches such a job."""
        if submission_id not in self._job_teams:
            self._job_teams[submission_id] = self.job_teams(submission_id) if self.job_teams is not None else None
        return self._job_teams[submission_id]

    def _check_job(self, action: Action, cluster_name: str, submission_id: str) -> None:
        """A log read or stop: on a cluster shared with it, a team may touch only its own jobs."""
        if action not in MUTATING_ACTIONS and (cluster_name, submission_id) in self._readable_jobs:
            return
        if self.policy is None:
            self._check(action, cluster_name, submission_id)
            return
        cluster = self.inner.describe_cluster(cluster_name)
        job_team = None
        if cluster is not None and cluster.team != self.actor.team:
            job_team = self._job_team(submission_id)
        self._check(action, cluster_name, submission_id, job_team, cluster=cluster, described=True)
        self._readable_jobs.add((cluster_name, submission_id))

    # ---------------------------------------------------------------- clusters
    def validate_configuration(self, config: JobConfiguration) -> None:
        self.inner.validate_configuration(config)

    def create_or_get_cluster(
        self, name: str, spec: ClusterSpec, labels: Mapping[str, str], lease: Lease | None = None
    ) -> ClusterInfo:
        existing = self.inner.describe_cluster(name)
        self._check(Action.CREATE if existing is None else Action.USE, name, cluster=existing, described=True)
        if existing is None:
            self._check_sandbox_possible(name)
        info = self.inner.create_or_get_cluster(name, spec, labels, lease)
        if existing is None and info.team != labels.get(TEAM_LABEL):
            # Another team created it between the check and the create: what we got is a use of theirs.
            self._check(Action.USE, name, cluster=info, described=True)
        return info

    def acquire_lease(self, name: str, lease: Lease) -> ClusterInfo:
        self._check(Action.USE, name)
        return self.inner.acquire_lease(name, lease)

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        self._check(Action.RELEASE, name)
        return self.inner.release_leases(name, keys)

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        return self.inner.describe_cluster(name)

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        return self.inner.list_clusters(labels)

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:
        self._check(Action.DELETE, name)
        return self.inner.delete_cluster(name, condition)

    # --------------------------------------------------------------------- jobs
    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        if self.policy is not None and metadata.get(TEAM_METADATA) != self.actor.team and not self.actor.cleanup:
            raise AuthorizationError(
                f"refused: {self.actor} may not submit a job billed to team {metadata.get(TEAM_METADATA)!r}"
            )
        self._check(Action.SUBMIT, cluster_name, submission_id)
        return self.inner.submit_job(cluster_name, submission_id, job, metadata)

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        self._check(Action.USE, cluster_name)
        return self.inner.describe_job(cluster_name, submission_id)

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        self._check(Action.USE, cluster_name)
        return self.inner.list_jobs(cluster_name)

    def job_logs(self, cluster_name: str, submission_id: str) -> str:
        self._check_job(Action.READ_LOGS, cluster_name, submission_id)
        return self.inner.job_logs(cluster_name, submission_id)

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        self._check_job(Action.READ_LOGS, cluster_name, submission_id)
        return self.inner.job_log_chunks(cluster_name, submission_id)

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        self._check_job(Action.STOP, cluster_name, submission_id)
        return self.inner.stop_job(cluster_name, submission_id)

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        self._check(Action.USE, cluster_name)
        return self.inner.job_dashboard_url(cluster_name, submission_id)

    def metrics_urls(self, cluster_name: str) -> list[str]:
        self._check(Action.USE, cluster_name)
        return self.inner.metrics_urls(cluster_name)

    def connection(self, cluster_name: str, *, valid_for: timedelta | None = None) -> RayConnection:
        self._check(Action.CONNECT, cluster_name)
        return self.inner.connection(cluster_name, valid_for=valid_for)


class _Watching:
    """For a backend that waits server-side: the same checks before each wait (in a thread: they may
    read the cluster)."""

    inner: Any
    _check: Callable[..., None]

    async def await_job(self, cluster_name: str, submission_id: str, timeout: float) -> JobInfo | None:
        await asyncio.to_thread(self._check, Action.USE, cluster_name)
        return await self.inner.await_job(cluster_name, submission_id, timeout)

    async def await_cluster(self, name: str, timeout: float) -> ClusterInfo | None:
        await asyncio.to_thread(self._check, Action.USE, name)
        return await self.inner.await_cluster(name, timeout)


class _BulkListing:
    """For a backend that lists every cluster's jobs at once (garbage collection)."""

    inner: Any

    def jobs_by_cluster(self) -> dict[str, list[JobInfo]]:
        return self.inner.jobs_by_cluster()


class _IncrementalLogs:
    """For a backend that reads a job's log from an offset: a log read like any other."""

    inner: Any
    _check_job: Callable[..., None]

    def job_log_since(
        self, cluster_name: str, submission_id: str, offset: int, *, complete_lines: bool = True
    ) -> tuple[str, int]:
        self._check_job(Action.READ_LOGS, cluster_name, submission_id)
        return self.inner.job_log_since(cluster_name, submission_id, offset, complete_lines=complete_lines)


#: The optional abilities of a backend, and what the authorized backend in front of it adds for each.
_ABILITIES = ((WatchingBackend, _Watching), (BulkJobListing, _BulkListing), (IncrementalLogs, _IncrementalLogs))


@functools.cache
def _authorized_class(abilities: tuple[type, ...]) -> type[AuthorizedBackend]:
    return type("AuthorizedBackend", (*abilities, AuthorizedBackend), {}) if abilities else AuthorizedBackend


def authorized(
    backend: RayBackend,
    actor: Actor,
    policy: Policy | None,
    audit: AuditSink | None = None,
    job_teams: JobTeams | None = None,
) -> AuthorizedBackend:
    """``backend`` behind the authorization check, keeping the optional abilities it has (watching,
    listing every job at once, reading logs from an offset) and no others."""
    abilities = tuple(mixin for protocol, mixin in _ABILITIES if isinstance(backend, protocol))
    return _authorized_class(abilities)(backend, actor, policy, audit, job_teams)
