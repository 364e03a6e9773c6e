"""Shared clusters: leases taken with create-or-get, released by a run's teardown, checked atomically
with every compare-and-delete; a second spec under one name refused. Per backend: a local cluster
(deleted while it starts: a few processes for a few seconds) and an emulated RayCluster too big to
schedule (no processes at all)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_ray_platform.backends.base import (
    ClusterBusyError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterSpecMismatchError,
    ClusterState,
    DeleteCondition,
    Lease,
)
from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.maintenance.garbage_collection import apply, decide
from airflow_ray_platform.maintenance.leases import DagRunLiveness, every_lease_live, release_and_delete
from airflow_ray_platform.spec.models import ClusterSpec
from airflow_ray_platform.spec.naming import TaskIdentity, cluster_labels

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LABELS = cluster_labels(owner="tests", team="platform", idle_timeout_seconds=60, max_lifetime_seconds=3600)


def _lease(run_id: str, task_id: str = "create_cluster", dag_id: str = "backfill") -> Lease:
    return Lease(TaskIdentity(dag_id, task_id, run_id), NOW)


@pytest.fixture(params=["local", "kuberay"])
def shared(request, tmp_path):
    """(backend, spec, name) for one shared cluster, deleted afterwards whatever the test left."""
    if request.param == "local":
        backend = LocalBackend(tmp_path / "root")
        spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
    else:
        backend = request.getfixturevalue("kuberay").backend
        spec = ClusterSpec(head={"cpu": "64", "memory": "1Gi"})  # unschedulable in the emulation
    name = f"leased-{request.param}"
    yield backend, spec, name
    backend.delete_cluster(name)


def test_leases_are_taken_with_create_or_get_and_guard_the_compare_and_delete(shared):
    backend, spec, name = shared
    first = backend.create_or_get_cluster(name, spec, LABELS, _lease("run-1"))
    second = backend.create_or_get_cluster(name, spec, LABELS, _lease("run-2"))
    again = backend.create_or_get_cluster(name, spec, LABELS, _lease("run-2"))  # a retry: the same lease
    assert first.created_at == second.created_at
    assert [lease.holder.run_id for lease in again.leases] == ["run-1", "run-2"]
    assert backend.acquire_lease(name, _lease("run-3", task_id="train")).leases[-1].holder.task_id == "train"

    with pytest.raises(ClusterBusyError, match=r"leased by backfill run run-1 \(task create_cluster"):
        backend.delete_cluster(name, DeleteCondition())
    released = backend.release_leases(name, [_lease("run-1").key, "no-such-lease"])
    assert released is not None
    assert [lease.holder.run_id for lease in released.leases] == ["run-2", "run-3"]
    with pytest.raises(ClusterBusyError, match="run-3"):  # only run-2's lease is declared expired
        backend.delete_cluster(name, DeleteCondition(expired_leases=frozenset({_lease("run-2").key})))
    assert backend.describe_cluster(name) is not None
    expired = frozenset(lease.key for lease in released.leases)
    assert backend.delete_cluster(name, DeleteCondition(expired_leases=expired))
    assert backend.describe_cluster(name) is None
    assert backend.release_leases(name, ["anything"]) is None
    with pytest.raises(ClusterNotFoundError):
        backend.acquire_lease(name, _lease("run-4"))


def test_a_second_spec_under_one_name_is_refused_naming_the_difference(shared):
    backend, spec, name = shared
    backend.create_or_get_cluster(name, spec, LABELS, _lease("run-1"))
    other = spec.model_copy(update={"head": spec.head.model_copy(update={"memory": "3Gi"})})
    with pytest.raises(ClusterSpecMismatchError, match=r'cluster.head.memory: existing "1Gi", requested "3Gi"'):
        backend.create_or_get_cluster(name, other, LABELS, _lease("run-2"))
    info = backend.describe_cluster(name)
    assert [lease.holder.run_id for lease in info.leases] == ["run-1"]  # the refused request holds nothing
    assert info.spec == spec.recorded()


def test_a_run_teardown_deletes_only_when_no_other_live_run_holds_the_cluster(shared):
    backend, spec, name = shared
    backend.create_or_get_cluster(name, spec, LABELS, _lease("run-1"))
    backend.acquire_lease(name, _lease("run-2"))
    running = {"run-2"}

    def is_live(lease: Lease) -> bool:
        return lease.holder.run_id in running

    stranger = release_and_delete(backend, name, dag_id="backfill", run_id="run-9", lease_is_live=is_live)
    assert not stranger.deleted and "holds no lease on it" in stranger.reason
    first = release_and_delete(backend, name, dag_id="backfill", run_id="run-1", lease_is_live=is_live)
    assert not first.deleted and "still leased by backfill run run-2" in first.reason
    assert [lease.holder.run_id for lease in backend.describe_cluster(name).leases] == ["run-2"]

    # run-1 takes its lease again, then ends without releasing it (killed): run-2's teardown ignores it.
    backend.acquire_lease(name, _lease("run-1"))
    last = release_and_delete(backend, name, dag_id="backfill", run_id="run-2", lease_is_live=is_live)
    assert last.deleted, last.reason
    assert backend.describe_cluster(name) is None
    assert release_and_delete(backend, name, dag_id="backfill", run_id="run-2", lease_is_live=is_live).reason == (
        "did not exist"
    )


def test_force_deletes_whoever_holds_it(shared):
    backend, spec, name = shared
    backend.create_or_get_cluster(name, spec, LABELS, _lease("run-1"))
    forced = release_and_delete(backend, name, dag_id="other", run_id="x", lease_is_live=every_lease_live, force=True)
    assert forced.deleted and "force=True" in forced.reason and "backfill run run-1" in forced.reason
    assert backend.describe_cluster(name) is None


def test_garbage_collection_ignores_and_releases_leases_of_finished_runs(shared):
    backend, spec, name = shared
    backend.create_or_get_cluster(name, spec, LABELS, _lease("finished"))
    backend.acquire_lease(name, _lease("running"))
    running = {"running"}
    info = backend.describe_cluster(name)

    def is_live(lease: Lease) -> bool:
        return lease.holder.run_id in running

    decision = decide(info, [], datetime.now(UTC) + timedelta(minutes=2), is_live)
    assert not decision.delete and "leased by backfill run running" in decision.reason
    assert [lease.holder.run_id for lease in decision.expired_leases] == ["finished"]
    (kept,) = apply(backend, None, [decision], dry_run=False, sweep_id="t")
    assert kept.action == "kept" and "released 1 expired lease(s)" in kept.detail
    assert [lease.holder.run_id for lease in backend.describe_cluster(name).leases] == ["running"]

    running.clear()  # the run ended without its teardown: idle past its timeout, the cluster goes
    info = backend.describe_cluster(name)
    decision = decide(info, [], datetime.now(UTC) + timedelta(minutes=2), is_live)
    assert decision.delete and decision.reason.startswith("idle")
    (deleted,) = apply(backend, None, [decision], dry_run=False, sweep_id="t")
    assert deleted.action == "deleted"
    assert backend.describe_cluster(name) is None


def test_a_lease_taken_after_the_decision_keeps_the_cluster(shared):
    """The race the compare-and-delete exists for: decided idle, then a run leases it, then the delete."""
    backend, spec, name = shared
    backend.create_or_get_cluster(name, spec, LABELS)
    decision = decide(backend.describe_cluster(name), [], datetime.now(UTC) + timedelta(minutes=2))
    assert decision.delete
    backend.acquire_lease(name, _lease("late"))
    (refused,) = apply(backend, None, [decision], dry_run=False, sweep_id="t")
    assert refused.action == "refused"
    assert backend.describe_cluster(name) is not None


def test_dag_run_liveness_asks_once_per_run_and_keeps_the_lease_when_airflow_cannot_answer():
    asked = []

    def count_running(dag_id: str, run_id: str) -> int:
        asked.append(run_id)
        if run_id == "unknown":
            raise RuntimeError("API server unreachable")
        return 1 if run_id == "running" else 0

    live = DagRunLiveness(count_running)
    assert live(_lease("running")) and live(_lease("running", task_id="train"))
    assert not live(_lease("finished"))
    assert live(_lease("unknown"))
    assert asked == ["running", "finished", "unknown"]


def test_spec_differences_name_every_field_that_differs():
    recorded = ClusterSpec(head={"cpu": "1"}, worker_groups=[{"group_name": "w", "replicas": 2}]).recorded()
    same_with_name = ClusterSpec(name="x", head={"cpu": "1"}, worker_groups=[{"group_name": "w", "replicas": 2}])
    assert same_with_name.differences_from(recorded) == []
    other = ClusterSpec(head={"cpu": "64"}, worker_groups=[{"group_name": "w", "replicas": 3}])
    assert other.differences_from(recorded) == [
        'cluster.head.cpu: existing "1", requested "64"',
        "cluster.worker_groups[0].replicas: existing 2, requested 3",
    ]


def test_leases_survive_the_round_trip_through_a_backend_record():
    lease = Lease(TaskIdentity("d", "t", "manual__2026-01-01T00:00:00+00:00", 3), NOW)
    assert Lease.from_dict(lease.to_dict()) == lease
    info = ClusterInfo("c", "local", ClusterState.READY, None, leases=(lease,))
    assert info.leases[0].held_by_run("d", "manual__2026-01-01T00:00:00+00:00")


def test_who_holds_a_cluster_is_on_its_record_as_leases_are_taken_and_released(shared, tmp_path):
    """What the Ray view's clusters page shows without asking the backend: the record's leases, as the
    operators record them (taken with create-or-get, released by a run's teardown, gone with the cluster)."""
    from airflow_ray_platform.records.lifecycle import LifecycleRecorder
    from airflow_ray_platform.records.queries import list_clusters
    from airflow_ray_platform.records.state_store import StateStore

    backend, spec, name = shared
    url = f"sqlite:///{tmp_path / 'state.db'}"
    recorder = LifecycleRecorder(None)
    recorder._store = StateStore(url)
    recorder.store.migrate()

    def holders() -> list[str]:
        (row,) = [row for row in list_clusters(recorder.store)[0] if row["name"] == name]
        return [lease["holder"] for lease in row["leases"]]

    recorder.cluster_seen(backend.create_or_get_cluster(name, spec, LABELS, _lease("run-1")), requested=True)
    recorder.cluster_seen(backend.acquire_lease(name, _lease("run-2")))
    assert holders() == ["backfill/create_cluster/run-1/-1", "backfill/create_cluster/run-2/-1"]
    kept = release_and_delete(
        backend, name, dag_id="backfill", run_id="run-1", lease_is_live=every_lease_live, recorder=recorder
    )
    assert not kept.deleted and holders() == ["backfill/create_cluster/run-2/-1"]
    gone = release_and_delete(
        backend, name, dag_id="backfill", run_id="run-2", lease_is_live=every_lease_live, recorder=recorder
    )
    assert gone.deleted and holders() == []
