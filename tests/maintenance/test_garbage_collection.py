"""Garbage collection: the decision table, then real local clusters swept by the shipped cleanup DAG."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from airflow.utils.state import DagRunState

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState, JobInfo, JobState, Lease
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.maintenance.garbage_collection import Decision, Outcome, Sweep, apply, decide, plan, report
from airflow_ray_platform.records.lifecycle import DeleteCause, LifecycleRecorder
from airflow_ray_platform.records.state_store import StateStore, cluster_uid
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.spec.naming import KEEP_LABEL, TaskIdentity, cluster_labels
from airflow_ray_platform.spec.timestamps import utc_now

from ..conftest import SHARED_CLUSTER

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _cluster(*, idle_s=600, life_s=3600, age_s=100, idle_for_s=100, ephemeral=False, managed=True, keep=False):
    labels = (
        cluster_labels(
            owner="o", team="t", idle_timeout_seconds=idle_s, max_lifetime_seconds=life_s, ephemeral=ephemeral
        )
        if managed
        else {}
    )
    if keep:
        labels[KEEP_LABEL] = "true"
    return ClusterInfo(
        "c",
        "local",
        ClusterState.READY,
        None,
        labels=labels,
        created_at=NOW - timedelta(seconds=age_s),
        last_active_at=NOW - timedelta(seconds=idle_for_s),
    )


def _job(state):
    return JobInfo("s", "c", JobState(state))


@pytest.mark.parametrize(
    ("cluster", "jobs", "delete", "reason"),
    [
        (_cluster(managed=False, idle_for_s=10**6), [], False, "not managed"),
        (_cluster(keep=True, idle_for_s=10**6), [], False, "labelled"),
        (_cluster(idle_for_s=10**6, age_s=10**7), [_job("RUNNING")], False, "1 active job"),
        (_cluster(idle_for_s=10**6), None, False, "could not be listed"),
        (_cluster(age_s=7200, idle_for_s=1), [], True, "past max_lifetime"),
        (_cluster(idle_for_s=601), [_job("SUCCEEDED")], True, "idle 0h10m01s > idle_timeout 0h10m00s"),
        (_cluster(idle_for_s=599), [], False, "in use"),
        (_cluster(ephemeral=True, idle_for_s=1), [_job("FAILED")], True, "ephemeral cluster whose job has ended"),
        (_cluster(ephemeral=True, idle_for_s=1), [], False, "in use"),
    ],
)
def test_decision_table(cluster, jobs, delete, reason):
    decision = decide(cluster, jobs, NOW)
    assert decision.delete is delete
    assert reason in decision.reason


def _wait_state(backend, cluster, submission_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while backend.describe_job(cluster, submission_id).state not in states:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.usefixtures("airflow_db")
def test_sweeps_keep_busy_and_raced_clusters_and_delete_the_idle_one(backend, shared_cluster, capfd):
    name = "gc-target"
    labels = cluster_labels(owner="tests", team="platform", idle_timeout_seconds=1, max_lifetime_seconds=3600)
    spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
    gc_backend = RayHook().backend
    recorder = LifecycleRecorder(None)
    backend.create_or_get_cluster(name, spec, labels)
    info = wait_for_cluster(gc_backend, name, timeout=180, poll_interval=0.5)
    uid = cluster_uid(info.backend, name, info.created_at)

    # Busy: a running job keeps the cluster however idle its labels say it is.
    backend.submit_job(name, "gc-busy", JobSpec(entrypoint="python -c 'import time; time.sleep(300)'"), {})
    _wait_state(backend, name, "gc-busy", {JobState.RUNNING})
    time.sleep(1.5)
    busy = {d.cluster.name: d for d in plan(gc_backend)}
    assert not busy[name].delete and "active job" in busy[name].reason
    assert not busy[SHARED_CLUSTER].delete and "not managed" in busy[SHARED_CLUSTER].reason
    backend.stop_job(name, "gc-busy")
    _wait_state(backend, name, "gc-busy", {JobState.STOPPED})

    # Raced: decided idle, then a job arrives before the delete: compare-and-delete keeps the cluster.
    time.sleep(1.5)
    decisions = [d for d in plan(gc_backend) if d.cluster.name == name]
    assert decisions[0].delete
    backend.submit_job(name, "gc-race", JobSpec(entrypoint="echo arrived"), {})
    (raced,) = apply(gc_backend, recorder, decisions, dry_run=False, sweep_id="race")
    assert raced.action == "refused"
    assert backend.describe_cluster(name) is not None
    _wait_state(backend, name, "gc-race", {JobState.SUCCEEDED})

    # Dry run: decides and records, deletes nothing.
    time.sleep(1.5)
    (dry,) = apply(
        gc_backend, recorder, [d for d in plan(gc_backend) if d.cluster.name == name], dry_run=True, sweep_id="dry"
    )
    assert dry.action == "would delete"
    assert backend.describe_cluster(name) is not None

    # The shipped cleanup DAG deletes the idle cluster, leaves the unmanaged one, and reports it.
    from ..test_dags.shipped_dags import ray_cleanup_idle_clusters

    # A lease whose DAG run Airflow does not count as running (ended, deleted) holds nothing.
    backend.acquire_lease(name, Lease(TaskIdentity("ended_dag", "create_cluster", "ended_run"), utc_now()))
    time.sleep(1.5)
    head_pid = backend.registry.load(name).nodes[0].pid
    run = ray_cleanup_idle_clusters.test()
    assert run.state == DagRunState.SUCCESS
    assert backend.describe_cluster(name) is None
    assert backend.describe_cluster(SHARED_CLUSTER) is not None
    with pytest.raises(ProcessLookupError):
        os.kill(head_pid, 0)
    out = capfd.readouterr().out
    assert "deleted 1 of 2 cluster(s); freed 1 CPU, 1.0 GiB memory, 0 GPU" in out
    kinds = {(e["kind"], e["reason"].split(":")[0]) for e in StateStore.from_airflow_connection(None).events_of(uid)}
    assert ("gc_refused", "busy at delete time") in kinds
    assert any(kind == "gc_would_delete" and reason.startswith("idle") for kind, reason in kinds)
    assert any(kind == "deleted_by_gc" and reason.startswith("idle") for kind, reason in kinds)


def test_report_sums_what_was_freed():
    big = ClusterInfo("big", "local", ClusterState.READY, None, resources={"CPU": 8, "memory": 16 * 1024**3, "GPU": 1})
    small = ClusterInfo("small", "local", ClusterState.READY, None, resources={"CPU": 2, "memory": 4 * 1024**3})
    outcomes = [
        Outcome(Decision(big, True, "idle", cause=DeleteCause.GC_IDLE), "deleted", "idle"),
        Outcome(Decision(small, True, "idle", cause=DeleteCause.GC_IDLE), "refused", "busy at delete time"),
        Outcome(Decision(small, True, "idle", cause=DeleteCause.GC_IDLE), "deleted", "idle"),
    ]
    table = report(Sweep([], outcomes, dry_run=False))
    assert table.splitlines()[0].split() == [
        "cluster",
        "backend",
        "team",
        "action",
        "CPU",
        "memory",
        "GiB",
        "GPU",
        "reason",
    ]
    assert "refused" in table.splitlines()[2]
    assert table.endswith("deleted 2 of 3 cluster(s); freed 10 CPU, 20.0 GiB memory, 1 GPU")


CHAOS_RUNS = int(os.environ.get("ARP_CHAOS_RUNS", "3"))


@pytest.mark.usefixtures("airflow_db", "shared_cluster")
def test_chaos_killed_creators_then_a_sweep_leaves_no_orphan_and_no_job_without_its_cluster(local_backend, tmp_path):
    """SIGKILL the task that creates an ephemeral cluster at random moments (before the create, while
    the head starts, while the job runs, after it ended), run after run; then one sweep. Every managed
    cluster left must be one with an active job, and every job that was running keeps its cluster."""
    from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE

    from ..helpers import dag_test_in_subprocess

    seed = int(os.environ.get("ARP_CHAOS_SEED") or time.time())
    rng = random.Random(seed)
    print(f"chaos seed {seed} (ARP_CHAOS_SEED={seed} replays it)")
    managed = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    before = {c.name for c in local_backend.list_clusters(managed)}
    for run in range(CHAOS_RUNS):
        when = datetime(2026, 5, 1 + run, tzinfo=UTC)
        seconds = rng.choice([1, 1, 90])  # most jobs end on their own; some are still running at the sweep
        worker = dag_test_in_subprocess(
            "ray_job_chaos", when, f"python -c 'import time; time.sleep({seconds})'", tmp_path / f"run{run}.log"
        )
        time.sleep(rng.uniform(0, 28))
        worker.kill()
        worker.wait()
    created = [c for c in local_backend.list_clusters(managed) if c.name not in before]
    running = {
        (c.name, job.submission_id)
        for c in created
        if c.state == ClusterState.READY
        for job in local_backend.list_jobs(c.name)
        if not job.state.is_terminal
    }
    try:
        # As the cleanup DAG would see it two minutes on: every orphan is past its (one-minute) idle_timeout.
        gc_backend = RayHook().backend
        decisions = plan(gc_backend, now=utc_now() + timedelta(minutes=2))
        outcomes = apply(gc_backend, None, decisions, dry_run=False, sweep_id="chaos")
        print(report(Sweep([], outcomes, dry_run=False)))
        # Kept only because a job was active at the sweep (its decision, or its compare-and-delete, said
        # so; the job may have ended since) or still is.
        busy = {o.decision.cluster.name for o in outcomes if "active job" in o.decision.reason or o.action == "refused"}
        for cluster in local_backend.list_clusters(managed):
            if cluster.name in before or cluster.name in busy:
                continue
            jobs = local_backend.list_jobs(cluster.name) if cluster.state == ClusterState.READY else []
            assert any(not job.state.is_terminal for job in jobs), f"{cluster.name} outlived its limits: {cluster}"
        for cluster_name, submission_id in running:
            job = local_backend.describe_job(cluster_name, submission_id)
            assert job is not None, f"running job {submission_id} lost its cluster {cluster_name}"
    finally:
        for cluster in local_backend.list_clusters(managed):
            if cluster.name not in before:
                local_backend.delete_cluster(cluster.name)


@pytest.mark.usefixtures("airflow_db")
def test_airflow_ray_gc_and_the_cleanup_dag_make_the_same_decisions(local_backend, shared_cluster, capfd):
    """The same records swept twice, dry, by ``airflow-ray gc`` and by the shipped cleanup DAG: the same
    abandoned job to stop (its task was marked failed while the job ran) and the same cluster decisions.
    Only how Airflow is asked differs: the CLI reads Airflow's database, the DAG asks as a task."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    from ..test_dags import ray_e2e_dags as dags
    from ..test_dags.shipped_dags import ray_cleanup_idle_clusters

    detached = dags.ray_job_detached.test(run_conf={"entrypoint": "python -c 'import time; time.sleep(300)'"})
    submission_id = detached.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    with create_session() as session:  # a user marks the task failed while its job runs
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == "ray_job_detached", TaskInstance.run_id == detached.run_id)
            .values(state="failed")
        )
    try:
        cli = Path(sys.executable).parent / "airflow-ray"
        done = subprocess.run([str(cli), "gc", "--dry-run", "--json"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        by_cli = json.loads(done.stdout)
        capfd.readouterr()
        assert ray_cleanup_idle_clusters.test(run_conf={"dry_run": True}).state == DagRunState.SUCCESS
        by_dag = capfd.readouterr().out

        assert by_cli["stopped_jobs"] == [
            {"submission_id": submission_id, "cluster": SHARED_CLUSTER, "task_state": "failed"}
        ]
        assert f"would stop Ray job {submission_id} on {SHARED_CLUSTER}: task failed" in by_dag
        assert by_cli["clusters"], "the sweep saw no cluster"
        rows = {line.split()[0]: line for line in by_dag.splitlines() if line.split()}
        for decision in by_cli["clusters"]:
            assert f"  {decision['action']}  " in rows[decision["cluster"]], (decision, rows.get(decision["cluster"]))
        assert local_backend.describe_job(SHARED_CLUSTER, submission_id).state == JobState.RUNNING  # dry: untouched
    finally:
        local_backend.stop_job(SHARED_CLUSTER, submission_id)
