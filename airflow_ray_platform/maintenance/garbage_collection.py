"""Garbage collection of idle Ray clusters: decide, then compare-and-delete, recording every decision.

A managed cluster is deleted when it is past its ``max_lifetime``, when it has had no pending or running
job and no live lease for longer than its ``idle_timeout``, or when it was a task's ephemeral cluster and
its jobs have all ended. It is never deleted while a job is active, when labelled keep, or when this
provider does not manage it. A lease is live while its DAG run runs (``lease_is_live``: the cleanup DAG
asks Airflow); leases of finished runs are ignored, and released when their cluster is kept. The
decision is a pure function of what the backend reports (fast over many thousands of clusters); the
delete is a compare-and-delete on the cluster's last-activity mark and leases, checked atomically by the
backend, so a job submitted or a lease taken between the decision and the delete keeps its cluster.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from airflow_ray_platform.backends.base import (
    BackendError,
    BulkJobListing,
    ClusterBusyError,
    ClusterInfo,
    ClusterState,
    DeleteCondition,
    JobInfo,
    Lease,
    RayBackend,
)
from airflow_ray_platform.maintenance.abandoned_jobs import TaskStateLookup, stop_abandoned_jobs
from airflow_ray_platform.maintenance.leases import LeaseLiveness, every_lease_live
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.lifecycle import DeleteCause, LifecycleRecorder
from airflow_ray_platform.runs.cluster import release_leases
from airflow_ray_platform.runs.job_run import RayJobRun
from airflow_ray_platform.spec.naming import (
    EPHEMERAL_LABEL,
    IDLE_TIMEOUT_LABEL,
    KEEP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MAX_LIFETIME_LABEL,
)
from airflow_ray_platform.spec.timestamps import to_text, utc_now
from airflow_ray_platform.tenancy.policy import Policy, configured_policy


@dataclass(frozen=True)
class Decision:
    cluster: ClusterInfo
    delete: bool
    reason: str
    #: Leases of finished runs: ignored by the decision and the delete, released if the cluster stays.
    expired_leases: tuple[Lease, ...] = field(default=())
    #: Past the platform policy's hard lifetime: these active jobs are stopped first, and the cluster is
    #: deleted whatever holds it.
    stop_jobs: tuple[JobInfo, ...] = field(default=())
    #: Why it is deleted, in a word (None: it is kept).
    cause: DeleteCause | None = None

    def __post_init__(self) -> None:
        if self.delete != (self.cause is not None):
            raise ValueError("a decision to delete names its cause, and only such a decision")

    @property
    def managed(self) -> bool:
        return self.cluster.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    action: str  # "deleted", "kept", "would delete" (dry run), "refused" (busy at delete time), "error"
    detail: str


def _seconds_label(cluster: ClusterInfo, label: str) -> timedelta | None:
    value = cluster.labels.get(label, "")
    return timedelta(seconds=int(value)) if value.isdigit() and int(value) > 0 else None


#: A team's hard cluster lifetime under the platform policy (None: no hard limit).
HardLifetime = Callable[[str | None], timedelta | None]


def no_hard_lifetime(team: str | None) -> timedelta | None:
    """Without a platform policy nothing is stopped for its age: ``max_lifetime`` waits for the jobs."""
    return None


def decide(
    cluster: ClusterInfo,
    jobs: Sequence[JobInfo] | None,
    now: datetime,
    lease_is_live: LeaseLiveness = every_lease_live,
    hard_lifetime: HardLifetime = no_hard_lifetime,
) -> Decision:
    """Whether to delete ``cluster``; ``jobs`` None means they could not be listed (keep, to be safe)."""
    live = [lease for lease in cluster.leases if lease_is_live(lease)]
    expired = tuple(lease for lease in cluster.leases if lease not in live)
    limit = hard_lifetime(cluster.team)
    age = now - (cluster.created_at or now)
    if cluster.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE and limit is not None and age > limit:
        active = tuple(job for job in jobs or () if not job.state.is_terminal)
        why = f"past the platform policy's hard max_lifetime: age {_short(age)} > {_short(limit)}"
        why += f"; stopping {len(active)} job(s)" if active else ""
        return Decision(cluster, True, why, expired, active, DeleteCause.GC_HARD_LIFETIME)
    decision = _decide(cluster, jobs, now, live)
    return replace(decision, expired_leases=expired)


def _decide(cluster: ClusterInfo, jobs: Sequence[JobInfo] | None, now: datetime, live: Sequence[Lease]) -> Decision:
    if cluster.labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        broken = f" ({cluster.message})" if cluster.state == ClusterState.FAILED and cluster.message else ""
        return Decision(cluster, False, f"not managed by airflow-ray-platform{broken}")
    if cluster.labels.get(KEEP_LABEL) == "true":
        return Decision(cluster, False, f"labelled {KEEP_LABEL}=true")
    if cluster.unusable:
        return Decision(cluster, True, f"unusable: {cluster.unusable}", cause=DeleteCause.GC_UNUSABLE)
    if jobs is None:
        return Decision(cluster, False, "its jobs could not be listed")
    active = [job.submission_id for job in jobs if not job.state.is_terminal]
    if active:
        return Decision(cluster, False, f"{len(active)} active job(s)")
    if live:
        return Decision(cluster, False, f"leased by {'; '.join(str(lease) for lease in live)}")
    created = cluster.created_at or now
    age = now - created
    max_lifetime = _seconds_label(cluster, MAX_LIFETIME_LABEL)
    if max_lifetime is not None and age > max_lifetime:
        why = f"past max_lifetime: age {_short(age)} > {_short(max_lifetime)}"
        return Decision(cluster, True, why, cause=DeleteCause.GC_MAX_LIFETIME)
    if cluster.labels.get(EPHEMERAL_LABEL) == "true" and jobs:
        return Decision(cluster, True, "ephemeral cluster whose job has ended", cause=DeleteCause.GC_EPHEMERAL)
    # The cluster's own mark, or its latest job's end if later (a long job ends long after it was submitted).
    job_moments = [job.end_time or job.start_time for job in jobs]
    last_active = max([cluster.last_active_at or created, *(moment for moment in job_moments if moment)])
    idle = now - last_active
    idle_timeout = _seconds_label(cluster, IDLE_TIMEOUT_LABEL)
    if idle_timeout is not None and idle > idle_timeout:
        why = f"idle {_short(idle)} > idle_timeout {_short(idle_timeout)}"
        return Decision(cluster, True, why, cause=DeleteCause.GC_IDLE)
    return Decision(cluster, False, f"in use: idle {_short(idle)}")


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def plan(
    backend: RayBackend,
    now: datetime | None = None,
    lease_is_live: LeaseLiveness = every_lease_live,
    hard_lifetime: HardLifetime = no_hard_lifetime,
) -> list[Decision]:
    """Decide for every cluster of ``backend``."""
    now = now or utc_now()
    clusters = backend.list_clusters()
    everyone = backend.jobs_by_cluster() if isinstance(backend, BulkJobListing) and clusters else None
    decisions = []
    for cluster in clusters:
        jobs: list[JobInfo] | None = []
        if everyone is not None:
            jobs = everyone.get(cluster.name, [])
        elif cluster.state == ClusterState.READY:
            try:
                jobs = backend.list_jobs(cluster.name)
            except BackendError:
                jobs = None
        decisions.append(decide(cluster, jobs, now, lease_is_live, hard_lifetime))
    return decisions


def apply(
    backend: RayBackend,
    recorder: LifecycleRecorder | None,
    decisions: Sequence[Decision],
    *,
    dry_run: bool,
    sweep_id: str,
) -> list[Outcome]:
    """Carry the decisions out (compare-and-delete) and record each one of a managed cluster."""
    outcomes = []
    for decision in decisions:
        cluster = decision.cluster
        if not decision.delete:
            outcome = Outcome(decision, "kept", decision.reason)
        elif dry_run:
            outcome = Outcome(decision, "would delete", decision.reason)
        else:
            condition = DeleteCondition(
                inactive_since=cluster.last_active_at or cluster.created_at,
                expired_leases=frozenset(lease.key for lease in decision.expired_leases),
            )
            try:
                if decision.stop_jobs:
                    _stop_for_hard_lifetime(backend, recorder, decision)
                backend.delete_cluster(cluster.name, None if decision.stop_jobs else condition)
                outcome = Outcome(decision, "deleted", decision.reason)
            except ClusterBusyError as busy:
                outcome = Outcome(decision, "refused", f"busy at delete time: {busy}")
            except BackendError as error:
                outcome = Outcome(decision, "error", str(error))
        if outcome.action != "deleted" and decision.expired_leases and not dry_run:
            outcome = _release_expired(backend, outcome)
        if recorder is not None and decision.managed:
            if outcome.action == "deleted":
                assert decision.cause is not None  # __post_init__: a deleting decision has one
                recorder.cluster_deleted(cluster, outcome.detail, decision.cause)
            else:
                recorder.gc_decision(cluster, outcome.action, outcome.detail, sweep_id)
        outcomes.append(outcome)
    return outcomes


def _stop_for_hard_lifetime(backend: RayBackend, recorder: LifecycleRecorder | None, decision: Decision) -> None:
    """Stop (and record STOPPED) the active jobs of a cluster past its hard lifetime, before its delete."""
    why = f"stopped: {decision.reason.split(';')[0]}"
    for job in decision.stop_jobs:
        RayJobRun(backend, decision.cluster.name, job.submission_id, recorder=recorder).stop_and_record(why)


def _release_expired(backend: RayBackend, outcome: Outcome) -> Outcome:
    """Release the expired leases of a cluster that stays (so they never pile up on a long-lived one)."""
    expired = outcome.decision.expired_leases
    try:
        release_leases(backend, outcome.decision.cluster.name, [lease.key for lease in expired], None)
    except BackendError as error:
        return Outcome(outcome.decision, outcome.action, f"{outcome.detail}; expired leases kept: {error}")
    return Outcome(outcome.decision, outcome.action, f"{outcome.detail}; released {len(expired)} expired lease(s)")


@dataclass(frozen=True)
class Sweep:
    """What one sweep of a backend did: the abandoned jobs it stopped, then every cluster's outcome."""

    stopped_jobs: list[tuple[JobInfo, str]]
    outcomes: list[Outcome]
    dry_run: bool


def sweep(
    backend: RayBackend,
    recorder: LifecycleRecorder | None,
    *,
    task_state: TaskStateLookup,
    lease_is_live: LeaseLiveness,
    hard_lifetime: HardLifetime | None = None,
    dry_run: bool = False,
    sweep_id: str = "",
    log: logging.Logger | None = None,
) -> Sweep:
    """One sweep, the cleanup DAG's and ``airflow-ray gc``'s alike: stop the jobs whose task instance
    ended without them, then decide for every cluster and carry the decisions out. Only how Airflow is
    asked (``task_state``, ``lease_is_live``) differs between the two: from a task, or from the CLI.
    ``hard_lifetime``: the platform policy's, by default."""
    policy = configured_policy()
    if hard_lifetime is None:
        hard_lifetime = policy.hard_lifetime if policy is not None else no_hard_lifetime
    started = time.monotonic()
    try:
        stopped = stop_abandoned_jobs(backend, recorder, task_state, dry_run=dry_run, log=log)
        decisions = plan(backend, lease_is_live=lease_is_live, hard_lifetime=hard_lifetime)
        outcomes = apply(backend, recorder, decisions, dry_run=dry_run, sweep_id=sweep_id or to_text())
    except Exception:
        metrics.SWEEP_FAILED(backend=backend.name)
        raise
    metrics.SWEEP_DURATION(time.monotonic() - started, backend=backend.name)
    metrics.SWEEP_COMPLETED(backend=backend.name)
    _count(backend.name, outcomes, policy)
    return Sweep(stopped, outcomes, dry_run)


def _count(backend: str, outcomes: Sequence[Outcome], policy: Policy | None) -> None:
    """What a sweep saw, as metrics: its decisions, the clusters by state and how long the oldest has
    been starting (what the stuck-starting alert reads), and the teams' budgets (the budget alert's)."""
    for action, count in Counter(outcome.action for outcome in outcomes).items():
        metrics.SWEEP_DECISIONS(count, backend=backend, decision=action.replace(" ", "_"))
    clusters = [outcome.decision.cluster for outcome in outcomes]
    for state in ClusterState:  # every state, so that a state nobody is in any more reads 0
        metrics.CLUSTERS(sum(1 for cluster in clusters if cluster.state == state), backend=backend, state=state)
    now = utc_now()
    starting = [now - cluster.created_at for cluster in clusters if _starting(cluster)]
    longest = max(starting, default=timedelta(0)).total_seconds()
    metrics.CLUSTERS_STARTING_LONGEST(longest, backend=backend)
    if policy is None:
        return
    for team in policy.teams:
        budget = policy.allowances(team).daily_cost_budget
        if budget is not None:
            metrics.TEAM_DAILY_BUDGET(budget, team=team)


def _starting(cluster: ClusterInfo) -> bool:
    return cluster.state == ClusterState.PROVISIONING and cluster.created_at is not None


def report(done: Sweep) -> str:
    """The table a sweep's log ends with: the jobs it stopped, every cluster, what was done and why, and
    the resources freed."""
    outcomes = done.outcomes
    header = ("cluster", "backend", "team", "action", "CPU", "memory GiB", "GPU", "reason")
    rows = [header]
    freed = {"CPU": 0.0, "memory": 0.0, "GPU": 0.0}
    for outcome in outcomes:
        cluster = outcome.decision.cluster
        resources = cluster.resources
        if outcome.action == "deleted":
            for key in freed:
                freed[key] += float(resources.get(key, 0.0))
        rows.append(
            (
                cluster.name,
                cluster.backend,
                cluster.team or "-",
                outcome.action,
                f"{resources.get('CPU', 0):g}",
                f"{float(resources.get('memory', 0)) / 1024**3:.1f}",
                f"{resources.get('GPU', 0):g}",
                outcome.detail,
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)) for row in rows]
    deleted = sum(1 for outcome in outcomes if outcome.action == "deleted")
    verb = "would stop" if done.dry_run else "stopped"
    lines[:0] = [
        f"{verb} Ray job {job.submission_id} on {job.cluster_name}: task {state}" for job, state in done.stopped_jobs
    ]
    lines.append(
        f"deleted {deleted} of {len(outcomes)} cluster(s); freed {freed['CPU']:g} CPU, "
        f"{freed['memory'] / 1024**3:.1f} GiB memory, {freed['GPU']:g} GPU"
    )
    return "\n".join(lines)
