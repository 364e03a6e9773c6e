"""Usage export: Parquet values match the recorded jobs exactly; exporting an interval twice changes nothing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from airflow.utils.state import DagRunState

from airflow_ray_platform.records.state_store import Event, StateStore
from airflow_ray_platform.records.usage_export import export_interval

DAY = datetime(2026, 6, 1, tzinfo=UTC)
PRICES = {"cpu_hour": 0.04, "gpu_hour": 2.5, "memory_gib_hour": 0.005}


def _populate(store: StateStore) -> None:
    for uid, team, requested, ready, deleted in [
        (
            "local/a/1",
            "forecasting",
            DAY + timedelta(hours=1),
            DAY + timedelta(hours=1, seconds=20),
            DAY + timedelta(hours=3),
        ),
        ("local/b/1", "forecasting", DAY + timedelta(hours=2), DAY + timedelta(hours=2, seconds=40), None),
        (
            "local/c/1",
            "pricing",
            DAY - timedelta(days=2),
            DAY - timedelta(days=2) + timedelta(seconds=10),
            DAY - timedelta(days=1),
        ),  # gone before the interval: not exported
    ]:
        store.upsert_cluster(
            cluster_uid=uid,
            backend="local",
            name=uid.split("/")[1],
            owner="o",
            team=team,
            state="READY",
            ephemeral=False,
            requested_at=requested,
            ready_at=ready,
            deleted_at=deleted,
        )
    jobs = [
        ("local/a/1", "j1", "forecasting", "SUCCEEDED", 2.0, 0.0, 4 * 1024**3, 60, 30 * 60),
        ("local/a/1", "j2", "forecasting", "FAILED", 1.0, 1.0, 2 * 1024**3, 10, 15 * 60),
        ("local/b/1", "j3", "forecasting", "SUCCEEDED", 4.0, 0.0, 8 * 1024**3, 0, 60 * 60),
    ]
    for uid, sid, team, state, cpu, gpu, memory, wait_s, run_s in jobs:
        submitted = DAY + timedelta(hours=4)
        store.upsert_job(
            cluster_uid=uid,
            submission_id=sid,
            owner="o",
            team=team,
            dag_id="d",
            task_id="t",
            run_id="r",
            map_index=-1,
            try_number=1,
            state=state,
            requested_cpu=cpu,
            requested_gpu=gpu,
            requested_memory_bytes=memory,
            submitted_at=submitted,
            started_at=submitted + timedelta(seconds=wait_s),
            # j3 ended between two looks: never seen running, so no queue wait is known
            running_at=None if sid == "j3" else submitted + timedelta(seconds=wait_s),
            ended_at=submitted + timedelta(seconds=wait_s + run_s),
            # j2's cluster answered Prometheus while it ran (GPU included); the others' did not
            measured_cpu_utilisation=37.5 if sid == "j2" else None,
            measured_gpu_utilisation=81.25 if sid == "j2" else None,
        )
    # Ended the next day: belongs to the next interval.
    store.upsert_job(
        cluster_uid="local/b/1",
        submission_id="j4",
        team="forecasting",
        state="SUCCEEDED",
        submitted_at=DAY + timedelta(days=1),
        started_at=DAY + timedelta(days=1),
        ended_at=DAY + timedelta(days=1, minutes=5),
    )


@pytest.fixture
def store(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    _populate(store)
    return store


def _digest(paths):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_values_match_the_recorded_jobs_exactly(store, tmp_path):
    result = export_interval(store, tmp_path / "out", DAY, DAY + timedelta(days=1), PRICES)
    assert (result.jobs, result.clusters) == (3, 2)
    jobs = {row["submission_id"]: row for row in pq.read_table(result.files[0]).to_pylist()}
    assert set(jobs) == {"j1", "j2", "j3"}
    j1 = jobs["j1"]
    assert j1["queue_wait_s"] == 60 and j1["duration_s"] == 1800
    assert jobs["j3"]["queue_wait_s"] is None and jobs["j3"]["duration_s"] == 3600
    assert j1["cpu_hours"] == 1.0 and j1["gpu_hours"] == 0.0 and j1["memory_gib_hours"] == 2.0
    assert j1["cost_estimate"] == pytest.approx(1.0 * 0.04 + 2.0 * 0.005)
    assert jobs["j2"]["gpu_hours"] == 0.25 and jobs["j2"]["cost_estimate"] == pytest.approx(
        0.25 * 0.04 + 0.25 * 2.5 + 0.5 * 0.005
    )
    assert j1["measured_cpu_utilisation"] is None and j1["measured_gpu_utilisation"] is None
    assert jobs["j2"]["measured_cpu_utilisation"] == 37.5 and jobs["j2"]["measured_gpu_utilisation"] == 81.25
    assert j1["started_at"] == DAY + timedelta(hours=4, seconds=60)

    clusters = {row["cluster_uid"]: row for row in pq.read_table(result.files[1]).to_pylist()}
    assert set(clusters) == {"local/a/1", "local/b/1"}
    a = clusters["local/a/1"]
    assert a["provisioning_wait_s"] == 20 and a["lifetime_s"] == 2 * 3600
    assert a["idle_s"] == 2 * 3600 - (30 + 15) * 60
    b = clusters["local/b/1"]
    assert b["lifetime_s"] == 22 * 3600 and b["idle_s"] == 22 * 3600 - 3600

    (rollup,) = pq.read_table(result.files[2]).to_pylist()
    assert rollup["team"] == "forecasting" and rollup["jobs"] == 3
    assert rollup["success_rate"] == pytest.approx(2 / 3)
    assert rollup["cluster_wait_p50_s"] == pytest.approx(30) and rollup["cluster_wait_p95_s"] == pytest.approx(39)


def test_exporting_an_interval_again_replaces_its_files(store, tmp_path):
    out = tmp_path / "out"
    first = export_interval(store, out, DAY, DAY + timedelta(days=1), PRICES)
    before = _digest(first.files)
    second = export_interval(store, out, DAY, DAY + timedelta(days=1), PRICES)
    assert second.files == first.files and _digest(second.files) == before
    assert sorted(str(p) for p in out.rglob("*") if p.is_file()) == sorted(first.files)
    assert all("date=2026-06-01" in path for path in first.files)


def test_next_interval_has_only_its_own_jobs(store, tmp_path):
    result = export_interval(store, tmp_path / "out", DAY + timedelta(days=1), DAY + timedelta(days=2), PRICES)
    assert result.jobs == 1
    assert [row["submission_id"] for row in pq.read_table(result.files[0]).to_pylist()] == ["j4"]


@pytest.mark.usefixtures("airflow_db")
def test_shipped_export_dag_writes_the_interval(tmp_path, monkeypatch):
    from airflow_ray_platform.settings import default_root

    from ..test_dags.shipped_dags import ray_usage_metrics_export

    store = StateStore(f"sqlite:///{default_root() / 'state.db'}")
    store.migrate()
    store.upsert_job(
        cluster_uid="local/x/1",
        submission_id="dag-export-job",
        team="t",
        state="SUCCEEDED",
        requested_cpu=1.0,
        started_at=DAY + timedelta(hours=1),
        submitted_at=DAY + timedelta(hours=1),
        ended_at=DAY + timedelta(hours=2),
    )
    run = ray_usage_metrics_export.test(logical_date=DAY + timedelta(days=1), run_conf={"output_dir": str(tmp_path)})
    assert run.state == DagRunState.SUCCESS
    (jobs_file,) = (tmp_path / "jobs").rglob("*.parquet")
    rows = pq.read_table(jobs_file).to_pylist()
    assert "dag-export-job" in [row["submission_id"] for row in rows]


def test_export_to_s3_replaces_the_intervals_objects(store, tmp_path, s3_server, monkeypatch):
    """The same files through s3:// (a real S3 server), byte for byte; exporting again replaces them."""
    import io

    import boto3

    from ..conftest import S3_ACCESS_KEY, S3_SECRET_KEY

    for variable, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(variable, value)
    local = export_interval(store, tmp_path / "out", DAY, DAY + timedelta(days=1), PRICES)
    first = export_interval(store, "s3://ray-logs/usage", DAY, DAY + timedelta(days=1), PRICES)
    again = export_interval(store, "s3://ray-logs/usage", DAY, DAY + timedelta(days=1), PRICES)
    assert first.files == again.files
    assert first.files[0] == "s3://ray-logs/usage/jobs/date=2026-06-01/interval-20260601T000000-20260602T000000.parquet"
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket="ray-logs", Prefix="usage/")["Contents"]
    assert sorted(f"s3://ray-logs/{item['Key']}" for item in listed) == sorted(first.files)
    for uri, path in zip(first.files, local.files, strict=True):
        body = client.get_object(Bucket="ray-logs", Key=uri.removeprefix("s3://ray-logs/"))["Body"].read()
        assert pq.read_table(io.BytesIO(body)).equals(pq.read_table(path))


def test_the_audit_trail_of_the_interval_is_exported_when_asked(store, tmp_path):
    inside = Event(
        "local/b/1",
        "delete_refused",
        DAY + timedelta(hours=3),
        reason="refused: it belongs to team 'b'",
        discriminator="1",
        team="team-a",
        actor="team 'team-a' (task d/t/r/-1, try 1)",
    )
    outside = Event(
        "local/b/1",
        "submit_allowed",
        DAY + timedelta(days=1, hours=1),
        discriminator="2",
        team="team-b",
        actor="team 'team-b'",
    )
    lifecycle_only = Event("local/b/1", "ready", DAY + timedelta(hours=3), discriminator="3")  # no actor: not audit
    for event in (inside, outside, lifecycle_only):
        store.record_event(event)
    plain = export_interval(store, tmp_path / "plain", DAY, DAY + timedelta(days=1), PRICES)
    assert not any("/audit/" in path for path in plain.files)
    result = export_interval(store, tmp_path / "out", DAY, DAY + timedelta(days=1), PRICES, include_audit=True)
    (row,) = pq.read_table(result.files[3]).to_pylist()
    assert (row["team"], row["kind"], row["cluster_uid"]) == ("team-a", "delete_refused", "local/b/1")
    assert row["occurred_at"] == DAY + timedelta(hours=3) and row["actor"].startswith("team 'team-a'")
