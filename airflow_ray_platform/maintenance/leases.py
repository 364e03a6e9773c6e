"""Shared clusters: who still needs one, and deleting it only when nobody does.

A task that uses a named cluster takes a :class:`~airflow_ray_platform.backends.base.Lease` on it, held
for its DAG run. A run's teardown (``RayClusterDeleteOperator``) releases its own leases and deletes
the cluster only if no live lease and no active job remain, as a compare-and-delete; otherwise the
cluster stays, for the run that still holds it, and the cleanup DAG's idle timeout deletes it once
nobody does. A lease is live while its DAG run is queued or running, as Airflow says: a run that ended
without releasing (killed, its teardown never ran) holds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_ray_platform.backends.base import ClusterBusyError, ClusterInfo, DeleteCondition, Lease, RayBackend
from airflow_ray_platform.records.lifecycle import DeleteCause, LifecycleRecorder
from airflow_ray_platform.runs.cluster import release_leases
from airflow_ray_platform.spec.timestamps import utc_now
from airflow_ray_platform.tenancy.authorization import AuthorizationError

log = logging.getLogger(__name__)

#: Whether a lease's DAG run still runs.
LeaseLiveness = Callable[[Lease], bool]
#: The DAG run states in which a run still holds its leases.
RUNNING_DAG_RUN_STATES = ("queued", "running")


def every_lease_live(lease: Lease) -> bool:
    """Outside Airflow nothing can tell whether a run still runs: every lease holds."""
    return True


class DagRunLiveness:
    """A lease is live while Airflow counts its DAG run among the queued or running ones.

    ``count_running(dag_id, run_id)`` asks Airflow (from a task: the Task SDK's ``get_dr_count``); one
    question per run, remembered. If Airflow cannot answer, the lease counts as live: keeping a
    cluster a little longer is the safe mistake.
    """

    def __init__(self, count_running: Callable[[str, str], int]) -> None:
        self._count_running = count_running
        self._answers: dict[tuple[str, str], bool] = {}

    @classmethod
    def from_task_instance(cls, ti: Any) -> DagRunLiveness:
        """Asking through a running task's ``ti`` (``RuntimeTaskInstance.get_dr_count``)."""
        states = list(RUNNING_DAG_RUN_STATES)
        return cls(lambda dag_id, run_id: ti.get_dr_count(dag_id, run_ids=[run_id], states=states))

    @classmethod
    def from_metadata_db(cls) -> DagRunLiveness:
        """Asking Airflow's metadata database (the CLI's view, outside any task)."""

        def count_running(dag_id: str, run_id: str) -> int:
            from airflow.models.dagrun import DagRun
            from airflow.utils.session import create_session
            from sqlalchemy import func, select

            with create_session() as session:
                query = select(func.count()).where(
                    DagRun.dag_id == dag_id, DagRun.run_id == run_id, DagRun.state.in_(RUNNING_DAG_RUN_STATES)
                )
                return int(session.scalar(query) or 0)

        return cls(count_running)

    def __call__(self, lease: Lease) -> bool:
        if lease.expires_at is not None:  # an interactive session's: no DAG run to ask about
            return utc_now() < lease.expires_at
        run = (lease.holder.dag_id, lease.holder.run_id)
        if run not in self._answers:
            try:
                self._answers[run] = self._count_running(*run) > 0
            except Exception as error:  # whatever Airflow raised: keep the lease
                log.warning("Cannot tell whether DAG run %s/%s still runs (%s); its lease holds", *run, error)
                self._answers[run] = True
        return self._answers[run]


@dataclass(frozen=True)
class Teardown:
    """What a run's teardown did to a shared cluster, and why."""

    deleted: bool
    reason: str


def release_and_delete(
    backend: RayBackend,
    name: str,
    *,
    dag_id: str,
    run_id: str,
    lease_is_live: LeaseLiveness,
    force: bool = False,
    recorder: LifecycleRecorder | None = None,
    deleted_by: str = "",
) -> Teardown:
    """Release run ``run_id``'s leases on cluster ``name`` and delete it if nobody else needs it.

    Deleted only when the run held a lease (a run never deletes a cluster it did not create or use
    through this provider), no live lease of another run remains, and no job is pending or running, all
    checked atomically with the delete. ``force`` deletes unconditionally, as before leases existed.
    """
    info = backend.describe_cluster(name)
    if info is None:
        return Teardown(False, "did not exist")
    others = [lease for lease in info.leases if not lease.held_by_run(dag_id, run_id)]
    if force:
        backend.delete_cluster(name)
        held = f"; leases of {'; '.join(map(str, others))} ignored" if others else ""
        reason = f"deleted unconditionally (force=True){held}"
        _record(recorder, info, f"{deleted_by}: {reason}", DeleteCause.FORCED)
        return Teardown(True, reason)
    mine = [lease.key for lease in info.leases if lease.held_by_run(dag_id, run_id)]
    if not mine:
        return Teardown(
            False,
            f"kept: run {run_id} of {dag_id} holds no lease on it (it did not create or use it through "
            "this provider); force=True deletes it anyway",
        )
    released = release_leases(backend, name, mine, recorder)
    if released is None:
        return Teardown(False, "did not exist")
    live = [lease for lease in released.leases if lease_is_live(lease)]
    if live:
        return Teardown(
            False,
            f"kept: still leased by {'; '.join(map(str, live))}; the last of them deletes it, or the "
            "cleanup DAG after its idle_timeout",
        )
    # As of what was just read: a job submitted since (its submitter marks activity first) keeps it too.
    condition = DeleteCondition(
        inactive_since=released.last_active_at,
        expired_leases=frozenset(lease.key for lease in released.leases),
    )
    try:
        deleted = backend.delete_cluster(name, condition)
    except ClusterBusyError as busy:
        return Teardown(False, f"kept: {busy}; the cleanup DAG deletes it after its idle_timeout")
    except AuthorizationError as refused:  # another team's cluster it was admitted to, or one not managed
        return Teardown(False, f"kept: this run released its lease, but deleting it is {refused}")
    if not deleted:
        return Teardown(False, "did not exist")
    reason = "deleted: this run released its lease and no other run holds one"
    _record(recorder, released, f"{deleted_by}: {reason}", DeleteCause.RUN_RELEASED)
    return Teardown(True, reason)


def _record(recorder: LifecycleRecorder | None, info: ClusterInfo, reason: str, cause: DeleteCause) -> None:
    if recorder is not None:
        recorder.cluster_deleted(info, reason, cause)
