"""The state store on SQLite, and on real PostgreSQL and MariaDB when their URLs are given.

.ci/run sets ARP_TEST_POSTGRES_URL and ARP_TEST_MYSQL_URL (this project's machines run both servers);
on a laptop without them those cases skip, saying why.
"""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from airflow_ray_platform.records.state_store import (
    MIGRATIONS,
    SCHEMA_REVISION,
    VERSION_TABLE,
    Event,
    StateStore,
    clusters,
    events,
    jobs,
    metadata,
)

URL_VARIABLES = {"postgresql": "ARP_TEST_POSTGRES_URL", "mysql": "ARP_TEST_MYSQL_URL"}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request, tmp_path) -> StateStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = os.environ.get(URL_VARIABLES[request.param])
        if not url:
            pytest.skip(f"{URL_VARIABLES[request.param]} is not set (no {request.param} server to test against)")
    store = StateStore(url)
    with store.engine.begin() as connection:  # a clean schema in the shared test database
        metadata.drop_all(connection)
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    store.migrate()
    yield store
    store.engine.dispose()


def test_migrations_create_the_schema_once(store):
    store.migrate()  # again: nothing to do
    with store.engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == SCHEMA_REVISION
    assert store.schema_revision() == SCHEMA_REVISION
    inspector = sa.inspect(store.engine)
    for table in (clusters, jobs, events):
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())


def test_upgrade_from_the_first_schema_keeps_the_rows(store):
    """A store created by 0001 (before measured utilisation) upgrades in place, its rows intact."""
    from alembic import command
    from alembic.config import Config

    with store.engine.begin() as connection:
        metadata.drop_all(connection)
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            sa.text(
                "INSERT INTO arp_jobs (cluster_uid, submission_id, state, updated_at) "
                "VALUES ('c', 's', 'SUCCEEDED', :t)"
            ),
            {"t": NOW},
        )
    assert store.schema_revision() == "0001"
    store.migrate()
    assert store.schema_revision() == SCHEMA_REVISION
    row = store.job("c", "s")
    assert row["state"] == "SUCCEEDED" and row["measured_cpu_utilisation"] is None


def test_schema_revision_is_alembics_head():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_cluster_upsert_keeps_one_row_per_incarnation(store):
    uid = "local/zone-training/2026-06-01T12:00:00+00:00"
    requested = Event(uid, "requested", NOW)
    for _ in range(2):  # two workers recording the same request
        store.upsert_cluster(
            requested,
            cluster_uid=uid,
            backend="local",
            name="zone-training",
            owner="ds",
            team="fc",
            state="PROVISIONING",
            ephemeral=False,
            requested_at=NOW,
            labels={"a": "b"},
        )
    store.upsert_cluster(
        Event(uid, "ready", NOW + timedelta(seconds=15)),
        cluster_uid=uid,
        backend="local",
        name="zone-training",
        state="READY",
        ephemeral=False,
        ready_at=NOW + timedelta(seconds=15),
    )
    assert store.count(clusters) == 1
    row = store.cluster(uid)
    assert row["state"] == "READY" and row["owner"] == "ds" and row["labels"] == {"a": "b"}
    assert [e["kind"] for e in store.events_of(uid)] == ["requested", "ready"]


def test_job_upsert_and_idempotent_events(store):
    uid = "local/c/1"
    for state in ("PENDING", "RUNNING", "RUNNING", "SUCCEEDED"):
        store.upsert_job(
            Event(uid, f"job_{state.lower()}", NOW, submission_id="s1", discriminator=state),
            cluster_uid=uid,
            submission_id="s1",
            state=state,
            requested_cpu=0.5,
            team="fc",
        )
    assert store.job(uid, "s1")["state"] == "SUCCEEDED"
    assert [e["kind"] for e in store.events_of(uid)] == ["job_pending", "job_running", "job_succeeded"]
    assert store.record_event(Event(uid, "deleted", NOW, reason="idle")) is True
    assert store.record_event(Event(uid, "deleted", NOW, reason="idle")) is False


def test_a_job_is_marked_running_once_and_an_ended_one_keeps_its_end(store):
    uid = "local/c/1"
    for sid, state in (("pending", "PENDING"), ("ended", "SUCCEEDED")):
        store.upsert_job(cluster_uid=uid, submission_id=sid, state=state, team="fc", submitted_at=NOW)
    first = store.mark_job_running("pending", NOW + timedelta(seconds=7))
    assert first is not None and first["state"] == "RUNNING" and first["team"] == "fc"
    assert store.mark_job_running("pending", NOW + timedelta(seconds=9)) is None  # a second look changes nothing
    row = store.job(uid, "pending")
    running_at = row["running_at"] if row["running_at"].tzinfo else row["running_at"].replace(tzinfo=UTC)
    assert running_at == NOW + timedelta(seconds=7)
    assert store.mark_job_running("ended", NOW)["state"] == "SUCCEEDED"  # seen running late: its end stands
    assert store.mark_job_running("nobody-submitted-this", NOW) is None


def _write_events(url: str, worker: int, count: int, shared: int) -> None:
    store = StateStore(url)
    for index in range(count):
        store.record_event(Event(f"c/{worker}", "job_running", NOW, submission_id=str(index)))
        if index < shared:  # every worker also writes the same shared transitions
            store.record_event(Event("c/shared", "job_running", NOW, submission_id=str(index)))
    store.engine.dispose()


def test_concurrent_writers_lose_and_duplicate_nothing(store):
    workers, count, shared = 8, 1000, 100
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_write_events, args=(store.engine.url.render_as_string(False), w, count, shared))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
        assert process.exitcode == 0
    assert store.count(events) == workers * count + shared
    with store.engine.connect() as connection:
        per_cluster = dict(
            connection.execute(sa.select(events.c.cluster_uid, sa.func.count()).group_by(events.c.cluster_uid)).all()
        )
    assert per_cluster == {**{f"c/{w}": count for w in range(workers)}, "c/shared": shared}


def _silent_server():
    """A TCP port that accepts connections (the kernel does) and never says a word: a blackholed server."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def _ends(call, bound: float = 120.0):
    """Whether ``call`` returns (or raises) within ``bound`` seconds: a liveness bound, not a timing."""
    import threading

    outcome = {}

    def run():
        try:
            call()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    return not thread.is_alive(), outcome.get("error")


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_silent_database_fails_a_call_instead_of_holding_the_task(driver):
    """Found by review: with no timeout, a blackholed database held a task ~4 minutes per recording call."""
    listener = _silent_server()
    try:
        port = listener.getsockname()[1]
        store = StateStore(f"{driver}://user@127.0.0.1:{port}/db", timeout=2)
        ended, error = _ends(store.migrate)
    finally:
        listener.close()
    assert ended, "the state store call is still waiting on a silent server"
    assert error is not None


def test_a_silent_s3_endpoint_fails_a_call_instead_of_holding_the_task(monkeypatch):
    from airflow_ray_platform.records import object_storage
    from airflow_ray_platform.records.object_storage import ObjectStorage, ObjectStorageError

    monkeypatch.setattr(object_storage, "S3_READ_TIMEOUT", 2)
    listener = _silent_server()
    try:
        storage = ObjectStorage(
            "s3://bucket/logs",
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        )
        ended, error = _ends(lambda: storage.write("a.log", iter([b"x"])))
    finally:
        listener.close()
    assert ended, "the S3 call is still waiting on a silent endpoint"
    assert isinstance(error, ObjectStorageError)
