"""The Ray view's queries over 100,000 jobs and 10,000 clusters, on SQLite and PostgreSQL.

Each store is filled with generated records (12 teams, 60 days, one cluster incarnation per 10 jobs),
then the view's server-side work is timed, median of 7: the jobs list (first page; a team's page 20; a
team and state filtered page), the cluster list, one job's page, and the 30-day usage summary per team
and day. The baseline, in the same run on the same rows, is the same queries without the indexes of
migration 0004 (dropped, then restored): the ratio is what the indexes buy.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from airflow_ray_platform.records.queries import JobFilter, job_detail, list_clusters, list_jobs, usage_by_team_day
from airflow_ray_platform.records.state_store import StateStore, clusters, jobs
from bench import WORK
from bench.common import record

JOBS = int(os.environ.get("BENCH_VIEW_JOBS", "100000"))
CLUSTERS = JOBS // 10
TEAMS = [f"team-{index:02d}" for index in range(12)]
NOW = datetime(2026, 12, 1, tzinfo=UTC)
VIEW_INDEXES = (
    "ix_arp_jobs_submission_id",
    "ix_arp_jobs_submitted_at",
    "ix_arp_jobs_team_submitted_at",
    "ix_arp_jobs_dag_submitted_at",
    "ix_arp_jobs_state_submitted_at",
    "ix_arp_jobs_team_ended_at",
    "ix_arp_clusters_requested_at",
    "ix_arp_clusters_team_requested_at",
)


def _fill(store: StateStore) -> str:
    """Generated rows, inserted in batches; returns one submission id to open."""
    rng = random.Random(7)
    cluster_rows, job_rows = [], []
    for index in range(CLUSTERS):
        requested = NOW - timedelta(days=rng.uniform(0, 60))
        team = rng.choice(TEAMS)
        cluster_rows.append(
            {
                "cluster_uid": f"local/c-{index}/{requested.isoformat()}",
                "backend": "local",
                "name": f"c-{index}",
                "owner": "bench",
                "team": team,
                "state": "DELETED",
                "ephemeral": True,
                "resources": {"CPU": 2.0},
                "requested_at": requested,
                "ready_at": requested + timedelta(seconds=rng.uniform(10, 120)),
                "deleted_at": requested + timedelta(hours=1),
                "updated_at": requested,
            }
        )
        for job in range(JOBS // CLUSTERS):
            submitted = requested + timedelta(seconds=30 + 300 * job)
            started = submitted + timedelta(seconds=rng.uniform(0, 20))
            job_rows.append(
                {
                    "cluster_uid": cluster_rows[-1]["cluster_uid"],
                    "submission_id": f"job-{index}-{job}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
                    "owner": "bench",
                    "team": team,
                    "dag_id": f"dag_{rng.randrange(50)}",
                    "task_id": "train",
                    "run_id": f"scheduled__{submitted.isoformat()}",
                    "map_index": -1,
                    "try_number": 1,
                    "state": "SUCCEEDED" if rng.random() < 0.9 else "FAILED",
                    "requested_cpu": 1.0,
                    "requested_gpu": 0.0,
                    "requested_memory_bytes": 2 * 1024**3,
                    "submitted_at": submitted,
                    "started_at": started,
                    "ended_at": started + timedelta(seconds=rng.uniform(30, 600)),
                    "updated_at": started,
                }
            )
    with store.engine.begin() as connection:
        for start in range(0, len(cluster_rows), 5000):
            connection.execute(clusters.insert(), cluster_rows[start : start + 5000])
        for start in range(0, len(job_rows), 5000):
            connection.execute(jobs.insert(), job_rows[start : start + 5000])
    return job_rows[len(job_rows) // 2]["submission_id"]


def _median_ms(function: Callable[[], object], rounds: int = 7) -> float:
    function()  # warm: the first call pays for the connection and the page cache
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def _timings(store: StateStore, submission_id: str) -> dict[str, float]:
    team = TEAMS[3]
    month = (NOW - timedelta(days=30), NOW)
    return {
        "jobs_first_page": _median_ms(lambda: list_jobs(store, JobFilter(), 1, 50)),
        "jobs_team_page_20": _median_ms(lambda: list_jobs(store, JobFilter(team=team), 20, 50)),
        "jobs_team_failed": _median_ms(lambda: list_jobs(store, JobFilter(team=team, state="FAILED"), 1, 50)),
        "clusters_first_page": _median_ms(lambda: list_clusters(store, page=1, page_size=50)),
        "job_page": _median_ms(lambda: job_detail(store, submission_id)),
        "usage_30_days": _median_ms(lambda: usage_by_team_day(store, *month)),
    }


def _measure(name: str, store: StateStore) -> dict:
    store.migrate()
    started = time.perf_counter()
    submission_id = _fill(store)
    filled = time.perf_counter() - started
    with store.engine.begin() as connection:  # planner statistics, as a live database has them
        connection.execute(sa.text("ANALYZE"))
    indexed = _timings(store, submission_id)
    with store.engine.begin() as connection:  # the baseline: the same rows without migration 0004's indexes
        for index in VIEW_INDEXES:
            connection.execute(sa.text(f"DROP INDEX {index}"))
    unindexed = _timings(store, submission_id)
    result = {
        "fill_s": round(filled, 1),
        "indexed_ms": indexed,
        "without_view_indexes_ms": unindexed,
        "slowest_indexed_ms": max(indexed.values()),
        "without_indexes_over_indexed": {key: round(unindexed[key] / indexed[key], 1) for key in indexed},
    }
    print(name, result, flush=True)
    return result


def main() -> None:
    results = {"sqlite": _measure("sqlite", StateStore(f"sqlite:///{WORK / 'view-bench.sqlite'}"))}
    admin_url = os.environ.get("ARP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    database = f"arp_view_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {database}"))
    try:
        url = sa.make_url(admin_url).set(database=database)
        store = StateStore(url.render_as_string(hide_password=False))
        results["postgresql"] = _measure("postgresql", store)
        store.engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
    record(
        "ray_view_queries",
        {
            "jobs": JOBS,
            "clusters": CLUSTERS,
            **results,
            "target": "jobs list and usage summary <= 300 ms server time at 100,000 jobs and 10,000 clusters",
        },
    )


if __name__ == "__main__":
    main()
