"""Lifecycle operations at scale.

* GC decision over 10,000 cluster records (target: <= 2 s), beside a bare loop over the same records;
  and the cleanup DAG's whole plan over 10,000 RayClusters (with their RayJobs) in the emulated
  Kubernetes API through the kuberay backend: listing over HTTP, status mapping and decisions.
* Usage export of 1,000,000 job records against a bare pyarrow write of the same output table (target:
  throughput >= 50 %). Reported twice: the export's own work (derive columns, write) from the Arrow table
  it reads, and end to end including reading the rows out of the state store (SQLite).
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState, JobInfo, JobState
from airflow_ray_platform.maintenance.garbage_collection import decide
from airflow_ray_platform.records.prices import DEFAULT_PRICES
from airflow_ray_platform.records.state_store import StateStore, jobs
from airflow_ray_platform.records.usage_export import (
    JOB_COLUMNS,
    _read,
    _selected,
    export_interval,
    job_table,
)
from airflow_ray_platform.spec.naming import KEEP_LABEL, MANAGED_BY_LABEL, cluster_labels
from bench import WORK
from bench.common import record

CLUSTERS = int(os.environ.get("BENCH_GC_CLUSTERS", "10000"))
JOB_RECORDS = int(os.environ.get("BENCH_EXPORT_JOBS", "1000000"))
DAY = datetime(2026, 6, 1, tzinfo=UTC)


def gc_decisions() -> dict:
    now = DAY + timedelta(hours=12)
    population = _population(random.Random(7), now)
    started = time.perf_counter()
    bare = sum(len(info.labels) + len(job_list) for info, job_list in population)
    bare_s = time.perf_counter() - started
    started = time.perf_counter()
    decisions = [decide(info, job_list, now) for info, job_list in population]
    decide_s = time.perf_counter() - started
    assert bare and len(decisions) == CLUSTERS
    return {
        "clusters": CLUSTERS,
        "decide_s": round(decide_s, 3),
        "bare_loop_s": round(bare_s, 4),
        "deleted_share": round(sum(d.delete for d in decisions) / CLUSTERS, 3),
        "target": "<= 2 s",
    }


def _population(rng: random.Random, now: datetime) -> list[tuple[ClusterInfo, list[JobInfo]]]:
    population = []
    for index in range(CLUSTERS):
        labels = cluster_labels(
            owner="o",
            team=f"team-{index % 20}",
            idle_timeout_seconds=rng.choice([600, 1800]),
            max_lifetime_seconds=86400,
            ephemeral=rng.random() < 0.3,
        )
        if rng.random() < 0.05:
            labels[KEEP_LABEL] = "true"
        if rng.random() < 0.05:
            del labels[MANAGED_BY_LABEL]
        created = now - timedelta(seconds=rng.randint(60, 2 * 86400))
        info = ClusterInfo(
            f"c{index}",
            "local",
            ClusterState.READY,
            None,
            labels=labels,
            created_at=created,
            last_active_at=created + timedelta(seconds=rng.randint(0, 3600)),
        )
        states = rng.choices(["SUCCEEDED", "FAILED", "RUNNING"], weights=[6, 1, 2], k=rng.randint(0, 5))
        population.append((info, [JobInfo(f"j{i}", info.name, JobState(s)) for i, s in enumerate(states)]))
    return population


def gc_kuberay() -> dict:
    """The same kind of population as RayClusters and RayJobs in the emulated API server."""
    from airflow_ray_platform.backends.kuberay.manifests import render_ray_cluster
    from airflow_ray_platform.hooks.ray import RayHook
    from airflow_ray_platform.maintenance.garbage_collection import plan
    from airflow_ray_platform.spec.models import ClusterSpec
    from airflow_ray_platform.spec.naming import CLUSTER_LABEL, LAST_ACTIVE_ANNOTATION
    from tests.kube_emulator.api_server import KubernetesApiEmulator

    now = datetime.now(UTC)
    population = _population(random.Random(7), now)
    emulator = KubernetesApiEmulator().start()
    store = emulator.store
    spec = ClusterSpec(head={"cpu": "2", "memory": "4Gi"}, worker_groups=[{"group_name": "w", "replicas": 2}])
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    ready = {"state": "ready", "conditions": [{"type": "HeadPodReady", "status": "True"}]}
    for info, job_list in population:
        cluster = render_ray_cluster(
            info.name, "default", spec, info.labels, {LAST_ACTIVE_ANNOTATION: info.last_active_at.strftime(stamp)}
        )
        store.create("rayclusters", "default", cluster)
        key = ("rayclusters", "default", info.name)
        store.objects[key] = {
            **store.objects[key],
            "status": {
                **ready,
                "conditions": [{**ready["conditions"][0], "lastTransitionTime": info.created_at.strftime(stamp)}],
            },
        }
        store.objects[key]["metadata"]["creationTimestamp"] = info.created_at.strftime(stamp)
        for job in job_list:
            name = f"{info.name}-{job.submission_id}"
            store.create(
                "rayjobs",
                "default",
                {
                    "apiVersion": "ray.io/v1",
                    "kind": "RayJob",
                    "metadata": {"name": name, "labels": {CLUSTER_LABEL: info.name}},
                    "spec": {"entrypoint": "python train.py", "clusterSelector": {"ray.io/cluster": info.name}},
                },
            )
            store.objects[("rayjobs", "default", name)]["status"] = {"jobStatus": str(job.state)}
    kubeconfig = emulator.write_kubeconfig(WORK / "gc-kubeconfig.json")
    os.environ["AIRFLOW_CONN_KUBERNETES_GC_BENCH"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    )
    os.environ["AIRFLOW_CONN_RAY_GC_BENCH"] = json.dumps(
        {"conn_type": "ray", "extra": {"backend": "kuberay", "kubernetes_conn_id": "kubernetes_gc_bench"}}
    )
    try:
        backend = RayHook("ray_gc_bench").backend
        backend.list_clusters({"warm-up": "imports-and-connection"})  # once per process, not per sweep
        calls_before, server_before = dict(emulator.requests), emulator.server_seconds
        started = time.perf_counter()
        decisions = plan(backend, now)
        plan_s = time.perf_counter() - started
        server_s = emulator.server_seconds - server_before
        calls = {key: count - calls_before.get(key, 0) for key, count in emulator.requests.items()}
    finally:
        emulator.stop()
    expected = {info.name: decide(info, job_list, now).delete for info, job_list in population}
    assert {d.cluster.name: d.delete for d in decisions} == expected, "kuberay decisions differ from the records'"
    return {
        "rayclusters": CLUSTERS,
        "rayjobs": sum(len(job_list) for _, job_list in population),
        "plan_s": round(plan_s, 2),
        "emulated_api_server_s": round(server_s, 2),
        "plan_without_the_server_s": round(plan_s - server_s, 2),
        "api_calls": {key: count for key, count in calls.items() if count},
        "target": "<= 2 s",
    }


def export() -> dict:
    store = StateStore(f"sqlite:///{WORK / 'export-bench.db'}")
    store.migrate()
    rng = random.Random(11)
    rows = []
    for index in range(JOB_RECORDS):
        submitted = DAY + timedelta(seconds=rng.randint(0, 80000))
        started = submitted + timedelta(seconds=rng.randint(0, 120))
        rows.append(
            {
                "cluster_uid": f"local/c{index % 500}/1",
                "submission_id": f"job-{index}",
                "owner": "o",
                "team": f"team-{index % 20}",
                "dag_id": "d",
                "task_id": "t",
                "run_id": "r",
                "map_index": -1,
                "try_number": 1,
                "state": "SUCCEEDED" if index % 9 else "FAILED",
                "requested_cpu": 1.0,
                "requested_gpu": 0.0,
                "requested_memory_bytes": 2 * 1024**3,
                "submitted_at": submitted,
                "started_at": started,
                "ended_at": started + timedelta(seconds=rng.randint(1, 3000)),
                "updated_at": DAY,
            }
        )
    with store.engine.begin() as connection:
        for offset in range(0, len(rows), 50_000):
            connection.execute(sa.insert(jobs), rows[offset : offset + 50_000])
    del rows
    start, end = DAY, DAY + timedelta(days=1)
    query = sa.select(*_selected(store, jobs, JOB_COLUMNS)).where(jobs.c.ended_at >= start, jobs.c.ended_at < end)

    started = time.perf_counter()
    raw = _read(store, query, JOB_COLUMNS)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    table = job_table(raw, DEFAULT_PRICES)
    pq.write_table(table, WORK / "export-own.parquet")
    own_s = time.perf_counter() - started
    started = time.perf_counter()
    pq.write_table(table, WORK / "export-bare.parquet")
    bare_s = time.perf_counter() - started
    started = time.perf_counter()
    result = export_interval(store, WORK / "export-out", start, end)
    end_to_end_s = time.perf_counter() - started
    assert result.jobs == table.num_rows == JOB_RECORDS
    assert isinstance(table, pa.Table)
    return {
        "job_records": JOB_RECORDS,
        "bare_pyarrow_write_s": round(bare_s, 3),
        "export_derive_and_write_s": round(own_s, 3),
        "state_store_read_s": round(read_s, 2),
        "export_end_to_end_s": round(end_to_end_s, 2),
        "throughput_ratio_derive_and_write": round(bare_s / own_s, 3),
        "throughput_ratio_end_to_end": round(bare_s / end_to_end_s, 3),
        "target": "ratio >= 0.5",
    }


def main() -> None:
    record("gc_decision", gc_decisions())
    record("gc_plan_kuberay", gc_kuberay())
    record("usage_export", export())


if __name__ == "__main__":
    main()
