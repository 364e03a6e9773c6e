"""Recording lifecycle transitions from the Airflow side, without ever failing a job over bookkeeping.

The job run (behind the operators, the triggers and the sensor) and garbage collection call a
:class:`LifecycleRecorder`; it turns backend infos into state-store rows and events. If the store
cannot be reached, each call logs a warning and returns: the Ray job's outcome never depends on the
bookkeeping.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from airflow_ray_platform.backends.base import ClusterInfo, JobInfo
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.object_storage import ObjectStorage, log_key
from airflow_ray_platform.records.prices import estimated_cost
from airflow_ray_platform.records.state_store import Event, StateStore, cluster_uid, jobs
from airflow_ray_platform.records.utilisation import Utilisation
from airflow_ray_platform.settings import default_object_storage_uri
from airflow_ray_platform.spec.models import JobConfiguration, is_label_value
from airflow_ray_platform.spec.naming import EPHEMERAL_LABEL, TaskIdentity
from airflow_ray_platform.spec.results import JobResult
from airflow_ray_platform.spec.timestamps import to_text, utc_now
from airflow_ray_platform.tenancy.authorization import AuditEntry
from airflow_ray_platform.tenancy.policy import Actor

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _never_fails(method: Callable[P, R]) -> Callable[P, R | None]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(*args, **kwargs)
        except Exception as error:  # the store is optional for the job's outcome
            log.warning("Lifecycle state store unavailable, transition not recorded (%s): %s", method.__name__, error)
            return None

    return wrapper


def _label_or_none(value: str | None) -> str | None:
    """A team or owner read back from a cluster's labels, kept only if it is a label value: a label is
    written by whoever may edit the cluster, and what is recorded ends up in the Ray view and the bills."""
    if value is None or is_label_value(value):
        return value
    log.warning("Not recording a cluster label that is no label value (%d characters)", len(value))
    return None


class DeleteCause(enum.StrEnum):
    """Why a cluster was deleted, in a word an operator can count by (the record keeps the whole reason)."""

    JOB_ENDED = "job_ended"  # an ephemeral cluster whose job ended
    TASK_KILLED = "task_killed"  # an ephemeral cluster whose task was killed
    RUN_RELEASED = "run_released"  # the last DAG run holding a shared cluster released it
    FORCED = "forced"  # a teardown with force=True
    BY_USER = "by_user"  # airflow-ray clusters delete
    GC_IDLE = "gc_idle"
    GC_MAX_LIFETIME = "gc_max_lifetime"
    GC_HARD_LIFETIME = "gc_hard_lifetime"
    GC_EPHEMERAL = "gc_ephemeral"
    GC_UNUSABLE = "gc_unusable"

    @property
    def by_gc(self) -> bool:
        return self.value.startswith("gc_")


def _uid(info: ClusterInfo) -> str:
    return cluster_uid(info.backend, info.name, info.created_at or datetime.fromtimestamp(0, UTC))


class LifecycleRecorder:
    """Writes transitions to the state store named by ``conn_id`` (None: the embedded SQLite file),
    and terminal jobs' logs to ``log_storage_uri`` (None: ``file://`` under the local backend's root)."""

    def __init__(self, conn_id: str | None, log_storage_uri: str | None = None) -> None:
        self.conn_id = conn_id
        self.log_storage_uri = log_storage_uri
        self._store: StateStore | None = None

    @property
    def store(self) -> StateStore:
        if self._store is None:
            store = StateStore.from_airflow_connection(self.conn_id)
            store.migrate()
            self._store = store
        return self._store

    @_never_fails
    def cluster_seen(self, info: ClusterInfo, *, requested: bool = False) -> None:
        """The cluster was requested (created or got) or observed in a new state."""
        now = utc_now()
        values: dict[str, Any] = {
            "cluster_uid": _uid(info),
            "backend": info.backend,
            "name": info.name,
            "owner": _label_or_none(info.owner),
            "team": _label_or_none(info.team),
            "state": str(info.state),
            "ephemeral": info.labels.get(EPHEMERAL_LABEL) == "true",
            "dashboard_url": info.dashboard_url,
            "labels": dict(info.labels),
            "resources": dict(info.resources),
            "leases": [{"holder": lease.key, "acquired_at": to_text(lease.acquired_at)} for lease in info.leases],
            "requested_at": info.created_at,
            "last_active_at": info.last_active_at,
            "sandboxed": info.sandboxed,
        }
        kind = "requested" if requested else str(info.state).lower()
        if str(info.state) == "READY":
            values["ready_at"] = now
        if self.store.upsert_cluster(
            Event(values["cluster_uid"], kind, now, reason=info.message, discriminator=kind), **values
        ):
            self._cluster_transition(info, kind, now)

    def _cluster_transition(self, info: ClusterInfo, kind: str, now: datetime) -> None:
        """A cluster transition recorded for the first time, counted (once, whichever process saw it)."""
        tags = {"backend": info.backend, "team": _label_or_none(info.team)}
        if kind == "requested":
            metrics.CLUSTER_CREATED(**tags)
        elif kind == "failed":
            metrics.CLUSTER_FAILED(**tags)
        elif kind == "ready" and info.created_at is not None:
            # Only a cluster this provider saw requested: one found already running has no start to time.
            requested = Event(_uid(info), "requested", now, discriminator="requested")
            if self.store.recorded(requested):
                metrics.CLUSTER_READY(now - info.created_at, **tags)

    @_never_fails
    def persist_log(
        self,
        cluster: ClusterInfo,
        job: JobInfo,
        read_log: Callable[[], Iterable[bytes]],
        result: Callable[[], JobResult] | None = None,
    ) -> str | None:
        """Stream the terminal job's whole driver log to storage and record its URI on the job row, with
        ``result()`` (what the job handed back, found while the log streamed) in the same write: a job
        row with its log's URI is a finished one, result included.

        ``read_log`` (the log's chunks) is called here, inside the never-failing wrapper: a log that
        cannot be read is a warning, not a failed task.
        """
        storage = log_storage(self.log_storage_uri)
        created = to_text(cluster.created_at or datetime.fromtimestamp(0, UTC))
        uri = storage.write(log_key(cluster.backend, cluster.name, created, job.submission_id), read_log())
        handed_back = None if result is None else result().to_dict()
        self.store.upsert_job(
            cluster_uid=_uid(cluster),
            submission_id=job.submission_id,
            state=str(job.state),
            log_uri=uri,
            **({} if handed_back is None else {"result": handed_back}),
        )
        return uri

    @_never_fails
    def finished_job(self, identity: TaskIdentity) -> dict[str, Any] | None:
        """The task instance's Ray job if its record says it succeeded and was finished (its log persisted
        and its result kept in the same write), else None: what a retry whose cluster is gone reuses."""
        job = self.store.latest_job_of_task(identity.dag_id, identity.task_id, identity.run_id, identity.map_index)
        return job if job is not None and job["state"] == "SUCCEEDED" and job["log_uri"] else None

    @_never_fails
    def job_team(self, submission_id: str) -> str | None:
        """The team recorded for a job this provider submitted (None: it submitted no such job): what a
        job's own metadata says is written by whoever holds the cluster's token."""
        row = self.store.latest_job(submission_id)
        return None if row is None else row["team"]

    @_never_fails
    def job_running(self, backend: str, job: JobInfo) -> None:
        """The job was seen running: the first look to see it records when (its queue wait ends there)
        and counts the wait; later looks, by this waiter or another, change nothing."""
        now = utc_now()
        row = self.store.mark_job_running(job.submission_id, now)
        if row is None:
            return
        self.store.record_event(
            Event(row["cluster_uid"], "job_running", now, submission_id=job.submission_id, discriminator="RUNNING")
        )
        submitted = row.get("submitted_at")
        if submitted is not None:
            submitted = submitted if submitted.tzinfo else submitted.replace(tzinfo=UTC)
            metrics.JOB_QUEUE_WAIT(now - submitted, backend=backend, team=row.get("team"))

    @_never_fails
    def result_seen(self, cluster: ClusterInfo, job: JobInfo, result: JobResult) -> None:
        """What the job handed back (or why it was refused), kept with its record."""
        self.store.upsert_job(
            cluster_uid=_uid(cluster), submission_id=job.submission_id, state=str(job.state), result=result.to_dict()
        )

    @_never_fails
    def cluster_deleted(self, info: ClusterInfo, reason: str, cause: DeleteCause) -> None:
        now = utc_now()
        uid = _uid(info)
        kind = "deleted_by_gc" if cause.by_gc else "deleted"
        new = self.store.upsert_cluster(
            Event(uid, kind, now, reason=reason),
            cluster_uid=uid,
            backend=info.backend,
            name=info.name,
            state="DELETED",
            ephemeral=info.labels.get(EPHEMERAL_LABEL) == "true",
            deleted_at=now,
            deleted_reason=reason,
            leases=[],
        )
        if new:
            metrics.CLUSTER_DELETED(backend=info.backend, team=_label_or_none(info.team), cause=cause)

    @_never_fails
    def gc_decision(self, info: ClusterInfo, action: str, reason: str, sweep_id: str) -> None:
        """A garbage-collection decision that deleted nothing (kept, dry run, refused), with its reason."""
        self.store.record_event(
            Event(_uid(info), f"gc_{action.replace(' ', '_')}", utc_now(), reason=reason, discriminator=sweep_id)
        )

    @_never_fails
    def audit(self, entry: AuditEntry) -> None:
        """One authorization decision, or an action on a cluster or job, with who did it."""
        actor, verdict = entry.actor, entry.verdict
        if not verdict.allowed:
            metrics.AUTHORIZATION_REFUSED(team="cleanup" if actor.cleanup else actor.team, action=str(entry.action))
        cluster = entry.cluster
        uid = _uid(cluster) if cluster is not None else cluster_uid(entry.backend, entry.cluster_name, "-")
        outcome = "allowed" if verdict.allowed else "refused"
        now = utc_now()
        self.store.record_event(
            Event(
                uid,
                f"{entry.action}_{outcome}",
                now,
                submission_id=entry.submission_id,
                reason=verdict.reason,
                detail={
                    "action": str(entry.action),
                    "allowed": verdict.allowed,
                    "actor": actor.to_dict(),
                    "cluster_team": cluster.team if cluster is not None else None,
                },
                discriminator=f"{actor.key}/{to_text(now)}",
                team="cleanup" if actor.cleanup else actor.team,
                actor=str(actor),
            )
        )

    @_never_fails
    def task_state_set(self, job: Mapping[str, Any], actor: Actor, state: str) -> None:
        """A user set the state of the task running ``job`` (its record) by hand: who, and to what."""
        now = utc_now()
        self.store.record_event(
            Event(
                job["cluster_uid"],
                f"task_marked_{state}",
                now,
                submission_id=job["submission_id"],
                reason=f"the task was marked {state} in Airflow by user {actor.user!r}",
                detail={"action": "mark_task", "state": state, "actor": actor.to_dict()},
                discriminator=f"{actor.key}/{to_text(now)}",
                team=actor.team,
                actor=str(actor),
            )
        )

    @_never_fails
    def job_seen(
        self,
        cluster: ClusterInfo,
        job: JobInfo,
        *,
        identity: TaskIdentity | None = None,
        config: JobConfiguration | None = None,
        try_number: int | None = None,
        utilisation: Utilisation | None = None,
    ) -> None:
        """A job was submitted, reattached to, or observed in a (new) state (with what was measured
        of its cluster's utilisation while it ran, if anything was)."""
        values: dict[str, Any] = {
            "cluster_uid": _uid(cluster),
            "submission_id": job.submission_id,
            "state": str(job.state),
            "message": job.message,
            "entrypoint": job.entrypoint or None,
            "started_at": job.start_time,
            "ended_at": job.end_time,
        }
        if identity is not None:  # at submission (or reattach): who submitted, and when
            values.update(
                dag_id=identity.dag_id,
                task_id=identity.task_id,
                run_id=identity.run_id,
                map_index=identity.map_index,
                try_number=try_number,
                submitted_at=job.start_time or utc_now(),
            )
        if config is not None and config.job is not None:
            requested = config.requested_resources
            memory = requested["memory"]
            values.update(
                owner=config.owner,
                team=config.team,
                requested_cpu=requested["CPU"],
                requested_gpu=requested["GPU"],
                requested_memory_bytes=None if memory is None else int(memory),
            )
        if utilisation is not None and utilisation.cpu_percent is not None:
            values["measured_cpu_utilisation"] = utilisation.cpu_percent
        if utilisation is not None and utilisation.gpu_percent is not None:
            values["measured_gpu_utilisation"] = utilisation.gpu_percent
        kind = f"job_{str(job.state).lower()}"
        new = self.store.upsert_job(
            Event(
                values["cluster_uid"],
                kind,
                utc_now(),
                submission_id=job.submission_id,
                reason=job.message,
                discriminator=str(job.state),
            ),
            **values,
        )
        if new and job.state.is_terminal:
            self._job_ended(cluster, job)

    def _job_ended(self, cluster: ClusterInfo, job: JobInfo) -> None:
        """A job's end recorded for the first time: counted, timed and priced from its record (the team
        and resources its submission recorded, never what the job says of itself)."""
        row = self.store.job(_uid(cluster), job.submission_id) or {}
        tags = {"backend": cluster.backend, "team": row.get("team")}
        outcome = str(job.state).lower()
        metrics.JOB_FINISHED(**tags, outcome=outcome)
        if job.start_time is None or job.end_time is None:
            return
        ran = max(job.end_time - job.start_time, timedelta(0))
        metrics.JOB_DURATION(ran, **tags, outcome=outcome)
        hours = ran.total_seconds() / 3600
        cpu_hours = float(row.get("requested_cpu") or 0.0) * hours
        gpu_hours = float(row.get("requested_gpu") or 0.0) * hours
        gib_hours = float(row.get("requested_memory_bytes") or 0) / 1024**3 * hours
        metrics.CPU_HOURS(cpu_hours, **tags)
        metrics.GPU_HOURS(gpu_hours, **tags)
        metrics.COST(estimated_cost(cpu_hours, gpu_hours, gib_hours), **tags)


def read_job_log(
    submission_id: str,
    state_store_conn_id: str | None = None,
    log_storage_uri: str | None = None,
    may_read: Callable[[str | None], None] | None = None,
) -> Iterator[bytes]:
    """A job's persisted driver log, in chunks, whether or not its cluster still exists.

    The log's URI comes from the state store (the newest job of that id); ``log_storage_uri`` is the
    storage's base (None: the embedded ``file://`` default). ``may_read(team of the job)`` raises if
    the caller may not read it. Raises LookupError if none was persisted.
    """
    store = StateStore.from_airflow_connection(state_store_conn_id)
    query = (
        sa.select(jobs.c.log_uri, jobs.c.team)
        .where(jobs.c.submission_id == submission_id, jobs.c.log_uri.is_not(None))
        .order_by(jobs.c.updated_at.desc())
    )
    with store.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise LookupError(f"no persisted log for Ray job {submission_id!r}")
    if may_read is not None:
        may_read(row.team)
    return log_storage(log_storage_uri).read(row.log_uri)


def log_storage(log_storage_uri: str | None) -> ObjectStorage:
    """Where finished jobs' logs are (None: the embedded file:// default)."""
    return ObjectStorage(log_storage_uri or default_object_storage_uri())
