"""The records read back (the Ray view, the CLI): paging, filters, team visibility and the usage sums,
on SQLite, PostgreSQL and MariaDB, each database doing its own date arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_ray_platform.records.prices import DEFAULT_PRICES
from airflow_ray_platform.records.queries import (
    JobFilter,
    Scope,
    job_detail,
    list_clusters,
    list_jobs,
    running_jobs,
    usage_by_team_day,
)
from airflow_ray_platform.records.state_store import Event

from .test_state_store import store  # noqa: F401 - the per-database fixture

DAY = datetime(2026, 6, 1, tzinfo=UTC)


def _records(store) -> None:  # noqa: F811
    """Two teams: team a's 3 jobs of 2 CPUs and 1 hour each (one failed) over two days, team b's 1 job."""
    for team, ready in (("a", 30), ("b", 90)):
        store.upsert_cluster(
            Event(f"local/c-{team}/x", "requested", DAY),
            cluster_uid=f"local/c-{team}/x",
            backend="local",
            name=f"c-{team}",
            team=team,
            state="READY",
            requested_at=DAY,
            ready_at=DAY + timedelta(seconds=ready),
        )
    rows = [("a", 0, "SUCCEEDED"), ("a", 1, "FAILED"), ("a", 25, "SUCCEEDED"), ("b", 2, "SUCCEEDED")]
    for index, (team, hour, state) in enumerate(rows):
        started = DAY + timedelta(hours=hour)
        store.upsert_job(
            Event(f"local/c-{team}/x", f"job_{state.lower()}", started, submission_id=f"job-{index}"),
            cluster_uid=f"local/c-{team}/x",
            submission_id=f"job-{index}",
            team=team,
            owner="o",
            dag_id="d",
            state=state,
            requested_cpu=2.0,
            requested_gpu=0.0,
            requested_memory_bytes=4 * 1024**3,
            submitted_at=started - timedelta(seconds=10),
            started_at=started,
            running_at=started,
            ended_at=started + timedelta(hours=1),
        )


def test_jobs_are_paged_filtered_and_limited_to_the_visible_teams(store):  # noqa: F811
    _records(store)
    first, total = list_jobs(store, JobFilter(), page=1, page_size=3)
    assert total == 4 and [row["submission_id"] for row in first] == ["job-2", "job-3", "job-1"]  # newest first
    second, _ = list_jobs(store, JobFilter(), page=2, page_size=3)
    assert [row["submission_id"] for row in second] == ["job-0"]
    assert first[0]["cpu_hours"] == pytest.approx(2.0) and first[0]["queue_wait_s"] == pytest.approx(10)
    failed, count = list_jobs(store, JobFilter(team="a", state="failed"))
    assert count == 1 and failed[0]["submission_id"] == "job-1" and failed[0]["cluster_name"] == "c-a"
    only_b, count = list_jobs(store, JobFilter(Scope(teams={"b"})))
    assert count == 1 and only_b[0]["team"] == "b"
    assert job_detail(store, "job-0", Scope(teams={"b"})) is None  # another team's job is not there at all
    detail = job_detail(store, "job-0")
    assert detail["state"] == "SUCCEEDED" and [event["kind"] for event in detail["events"]][-1] == "job_succeeded"
    listed, count = list_clusters(store, Scope(teams={"a"}))
    assert count == 1 and listed[0]["name"] == "c-a"
    # a reader Airflow lets read other DAGs only (DAG-level permissions) sees none of DAG d's jobs
    elsewhere = Scope(dag_ids={"another_dag"})
    assert list_jobs(store, JobFilter(elsewhere))[1] == 0 and job_detail(store, "job-0", elsewhere) is None
    assert usage_by_team_day(store, DAY, DAY + timedelta(days=3), elsewhere)["days"] == []
    assert list_jobs(store, JobFilter(Scope(teams={"a"}, dag_ids={"d"})))[1] == 3


def test_usage_is_summed_per_team_and_day_in_the_database(store):  # noqa: F811
    _records(store)
    usage = usage_by_team_day(store, DAY, DAY + timedelta(days=3))
    days = {(row["team"], row["day"]): row for row in usage["days"]}
    assert set(days) == {("a", "2026-06-01"), ("a", "2026-06-02"), ("b", "2026-06-01")}
    assert days[("a", "2026-06-01")]["jobs"] == 2 and days[("a", "2026-06-01")]["succeeded"] == 1
    a = next(row for row in usage["teams"] if row["team"] == "a")
    assert a["cpu_hours"] == pytest.approx(6.0) and a["success_rate"] == pytest.approx(2 / 3)
    per_job = 2 * DEFAULT_PRICES["cpu_hour"] + 4 * DEFAULT_PRICES["memory_gib_hour"]  # usage_export's formula
    assert a["cost_estimate"] == pytest.approx(3 * per_job)
    assert a["cluster_wait_p50_s"] == pytest.approx(30, abs=0.01)
    only_b = usage_by_team_day(store, DAY, DAY + timedelta(days=3), Scope(teams={"b"}))
    assert [row["team"] for row in only_b["teams"]] == ["b"]


def test_running_now_and_each_clusters_usage(store):  # noqa: F811
    _records(store)
    store.upsert_job(
        cluster_uid="local/c-a/x", submission_id="live", team="a", dag_id="d", state="PENDING", submitted_at=DAY
    )
    assert [row["submission_id"] for row in running_jobs(store)] == ["live"]
    assert running_jobs(store, Scope(teams={"b"})) == []  # another team's is not listed
    store.mark_job_running("live", DAY + timedelta(seconds=30))
    (live,) = running_jobs(store)
    assert live["state"] == "RUNNING" and live["queue_wait_s"] == pytest.approx(30)
    clusters, _ = list_clusters(store)
    usage = {row["name"]: row["usage"] for row in clusters}
    assert usage["c-a"]["jobs"] == 4 and usage["c-a"]["failed"] == 1  # the three that ended, and the live one
    assert usage["c-a"]["cpu_hours"] == pytest.approx(6.0) and usage["c-b"]["cpu_hours"] == pytest.approx(2.0)
    per_job = 2 * DEFAULT_PRICES["cpu_hour"] + 4 * DEFAULT_PRICES["memory_gib_hour"]
    assert usage["c-a"]["cost_estimate"] == pytest.approx(3 * per_job)
    only_d, _ = list_clusters(store, Scope(dag_ids={"nothing-here"}))
    assert all(row["usage"] is None for row in only_d)  # usage of jobs the reader may not see is not summed
