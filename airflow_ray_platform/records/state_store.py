"""The platform's record of clusters, jobs and their lifecycle, in a database that outlives them.

Three tables: ``arp_clusters`` (one row per cluster *incarnation*: a cluster re-created under the same
name is a new row), ``arp_jobs`` (one row per Ray job), and ``arp_events``, append-only (requested,
provisioning, ready, job submitted, job state changes, idle since, deleted, deleted by GC with the
reason). Every write is an idempotent upsert in the database's own dialect (``ON CONFLICT`` on SQLite
and PostgreSQL, ``ON DUPLICATE KEY`` on MySQL/MariaDB), so many Airflow workers may write the same
transition at once and the tables hold it once. Schema changes go through Alembic migrations kept
under their own version table, beside Airflow's.

The database is an Airflow connection's (any SQLAlchemy URL), or a SQLite file under the local
backend's root when none is configured (the embedded default). This is not the local backend's private
registry of pids and tokens: it never holds a credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_ray_platform.connections import get_connection
from airflow_ray_platform.settings import default_state_store_url
from airflow_ray_platform.spec.timestamps import to_text, utc_now

log = logging.getLogger(__name__)

metadata = sa.MetaData()

clusters = sa.Table(
    "arp_clusters",
    metadata,
    sa.Column("cluster_uid", sa.String(160), primary_key=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("owner", sa.String(63)),
    sa.Column("team", sa.String(63)),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("ephemeral", sa.Boolean, nullable=False, default=False),
    sa.Column("dashboard_url", sa.String(255)),
    sa.Column("labels", sa.JSON),
    sa.Column("resources", sa.JSON),
    #: Who holds it, as last seen: [{"holder": task key, "acquired_at": ISO time}] (migration 0005).
    sa.Column("leases", sa.JSON),
    #: Whether it ran in the local backend's sandbox (NULL: not applicable; migration 0007).
    sa.Column("sandboxed", sa.Boolean),
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    sa.Column("ready_at", sa.DateTime(timezone=True)),
    sa.Column("last_active_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_reason", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_arp_clusters_backend_name", "backend", "name"),
    sa.Index("ix_arp_clusters_requested_at", "requested_at"),
    sa.Index("ix_arp_clusters_team_requested_at", "team", "requested_at"),
)

jobs = sa.Table(
    "arp_jobs",
    metadata,
    sa.Column("cluster_uid", sa.String(160), primary_key=True),
    sa.Column("submission_id", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(63)),
    sa.Column("team", sa.String(63)),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("map_index", sa.Integer),
    sa.Column("try_number", sa.Integer),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("entrypoint", sa.Text),
    sa.Column("requested_cpu", sa.Float),
    sa.Column("requested_gpu", sa.Float),
    sa.Column("requested_memory_bytes", sa.BigInteger),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    #: When it was first seen running (migration 0008): its queue wait ends there.
    sa.Column("running_at", sa.DateTime(timezone=True)),
    sa.Column("log_uri", sa.String(1024)),
    sa.Column("measured_cpu_utilisation", sa.Float),
    sa.Column("measured_gpu_utilisation", sa.Float),
    #: What the job handed back (``JobResult.to_dict()``; migration 0006).
    sa.Column("result", sa.JSON),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_arp_jobs_ended_at", "ended_at"),
    sa.Index("ix_arp_jobs_submission_id", "submission_id"),
    sa.Index("ix_arp_jobs_submitted_at", "submitted_at"),
    sa.Index("ix_arp_jobs_team_submitted_at", "team", "submitted_at"),
    sa.Index("ix_arp_jobs_dag_submitted_at", "dag_id", "submitted_at"),
    sa.Index("ix_arp_jobs_state_submitted_at", "state", "submitted_at"),
    sa.Index("ix_arp_jobs_team_ended_at", "team", "ended_at"),
)

events = sa.Table(
    "arp_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(64), nullable=False, unique=True),
    sa.Column("cluster_uid", sa.String(160), nullable=False),
    sa.Column("submission_id", sa.String(128)),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("detail", sa.JSON),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    #: The audit trail's: the team the actor works for ("cleanup" for the garbage collector), and the actor.
    sa.Column("team", sa.String(63)),
    sa.Column("actor", sa.String(1024)),
    sa.Index("ix_arp_events_cluster", "cluster_uid", "occurred_at"),
    sa.Index("ix_arp_events_team", "team", "occurred_at"),
)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "arp_alembic_version"
#: The newest migration's revision (a test checks it against Alembic's head).
SCHEMA_REVISION = "0008"
MIGRATION_LOCK_KEY = 0x41525053  # "ARPS": the advisory lock PostgreSQL migrations take


def cluster_uid(backend: str, name: str, created_at: datetime | str) -> str:
    """One cluster incarnation: the same name re-created later is another record."""
    stamp = created_at if isinstance(created_at, str) else to_text(created_at)
    return f"{backend}/{name}/{stamp}"


@dataclass(frozen=True)
class Event:
    cluster_uid: str
    kind: str
    occurred_at: datetime
    submission_id: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] | None = None
    discriminator: str = ""
    team: str | None = None
    actor: str | None = None

    @property
    def key(self) -> str:
        """Same transition, same key: a second writer of one transition adds nothing."""
        raw = json.dumps([self.cluster_uid, self.submission_id, self.kind, self.discriminator])
        return hashlib.sha256(raw.encode()).hexdigest()


#: Seconds a state-store connection may take (the connection's extra ``timeout`` overrides it): an
#: unreachable database must never hold a task (measured before this: about 4 minutes per recording
#: call on a blackholed one). Statements get no limit: the usage export reads millions of rows.
DEFAULT_TIMEOUT = 10.0


class StateStore:
    """Idempotent reads and writes of the lifecycle tables over one SQLAlchemy engine."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, **engine_options: Any) -> None:
        url_obj = sa.make_url(url)
        backend = url_obj.get_backend_name()
        if backend == "sqlite":
            # Many writer processes: wait for the lock instead of failing at once; WAL lets readers in.
            engine_options.setdefault("connect_args", {"timeout": 60})
            if url_obj.database:
                Path(url_obj.database).parent.mkdir(parents=True, exist_ok=True)
        elif backend == "postgresql":  # an unreachable server fails in seconds (libpq: the whole startup)
            engine_options.setdefault("connect_args", {"connect_timeout": max(1, int(timeout))})
        elif backend in ("mysql", "mariadb"):  # PyMySQL's connect timeout ends at the TCP connect; the
            # server's greeting is a read: bound reads too, generously (a long query streams its rows)
            engine_options.setdefault(
                "connect_args", {"connect_timeout": max(1, int(timeout)), "read_timeout": int(6 * timeout)}
            )
        engine_options.setdefault("pool_pre_ping", True)
        self.engine: Engine = sa.create_engine(url_obj, **engine_options)
        if url_obj.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.dialect = self.engine.dialect.name

    @classmethod
    def from_airflow_connection(cls, conn_id: str | None) -> StateStore:
        """The connection's database (extra ``sqlalchemy_url``, else its URI), or the embedded SQLite
        file when ``conn_id`` is None."""
        if conn_id is None:
            return cls(default_state_store_url())
        conn = get_connection(conn_id)
        # Airflow's URI spells the driver its own way; extra "sqlalchemy_url" names it exactly.
        extra = conn.extra
        return cls(
            extra.get("sqlalchemy_url") or conn.airflow_uri(), timeout=float(extra.get("timeout", DEFAULT_TIMEOUT))
        )

    def schema_revision(self) -> str | None:
        """The revision the database is at, or None before the first migration."""
        try:
            with self.engine.connect() as connection:
                return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        except sa.exc.DBAPIError:
            return None

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run from many processes at once).

        Every task calls this; when the schema is current it costs one query, not an Alembic run.
        """
        if self.schema_revision() == SCHEMA_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """One migrating process at a time (PostgreSQL locks inside the migration's transaction)."""
        if self.dialect == "sqlite":
            import fcntl

            database = self.engine.url.database
            if not database or database == ":memory:":
                yield
                return
            with open(f"{database}.migrate.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
        elif self.dialect in ("mysql", "mariadb"):
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT GET_LOCK('arp_state_store_migration', 300)"))
                try:
                    yield
                finally:
                    connection.execute(sa.text("SELECT RELEASE_LOCK('arp_state_store_migration')"))
        else:
            yield

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # ------------------------------------------------------------------ upserts
    def _upsert(self, connection: Connection, table: sa.Table, values: dict[str, Any]) -> None:
        keys = [column.name for column in table.primary_key.columns]
        updates = {k: v for k, v in values.items() if k not in keys}
        if self.dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            module = postgresql if self.dialect == "postgresql" else sqlite
            statement = module.insert(table).values(values)
            statement = statement.on_conflict_do_update(index_elements=keys, set_=updates)
        elif self.dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            statement = mysql.insert(table).values(values).on_duplicate_key_update(**updates)
        else:  # pragma: no cover - a dialect this store was not tested on
            raise NotImplementedError(f"state store does not support the {self.dialect} dialect")
        connection.execute(statement)

    def _insert_event(self, connection: Connection, event: Event) -> bool:
        values = {
            "event_key": event.key,
            "cluster_uid": event.cluster_uid,
            "submission_id": event.submission_id,
            "kind": event.kind,
            "reason": event.reason,
            "detail": dict(event.detail) if event.detail else None,
            "occurred_at": event.occurred_at,
            "team": event.team,
            "actor": event.actor,
        }
        if self.dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            module = postgresql if self.dialect == "postgresql" else sqlite
            statement = (
                module.insert(events)
                .values(values)
                .on_conflict_do_nothing(index_elements=["event_key"])
                .returning(events.c.event_key)
            )
            return connection.execute(statement).first() is not None
        statement = sa.insert(events).values(values).prefix_with("IGNORE")
        return connection.execute(statement).rowcount == 1

    # ------------------------------------------------------------------- writes
    def record_event(self, event: Event) -> bool:
        """Append one lifecycle event; False when that transition was already recorded."""
        with self._begin() as connection:
            return self._insert_event(connection, event)

    def upsert_cluster(self, event: Event | None = None, **values: Any) -> bool:
        """Insert or update a cluster row (and append its event in the same transaction); True when the
        event is a transition not recorded before."""
        return self._upsert_with_event(clusters, event, values)

    def upsert_job(self, event: Event | None = None, **values: Any) -> bool:
        """Insert or update a job row (and append its event in the same transaction); True when the event
        is a transition not recorded before."""
        return self._upsert_with_event(jobs, event, values)

    def _upsert_with_event(self, table: sa.Table, event: Event | None, values: dict[str, Any]) -> bool:
        values["updated_at"] = utc_now()
        with self._begin() as connection:
            self._upsert(connection, table, values)
            return event is not None and self._insert_event(connection, event)

    def mark_job_running(self, submission_id: str, at: datetime) -> dict[str, Any] | None:
        """Record that the job was first seen running at ``at`` (and is RUNNING, unless its record already
        says it ended); its row then, or None when an earlier look already recorded it (or no such job)."""
        first = sa.and_(jobs.c.submission_id == submission_id, jobs.c.running_at.is_(None))
        with self._begin() as connection:
            marked = connection.execute(sa.update(jobs).where(first).values(running_at=at, updated_at=utc_now()))
            if not marked.rowcount:
                return None
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.submission_id == submission_id, jobs.c.state == "PENDING")
                .values(state="RUNNING")
            )
            row = connection.execute(sa.select(jobs).where(jobs.c.submission_id == submission_id)).mappings().first()
        return dict(row) if row else None

    def recorded(self, event: Event) -> bool:
        """Whether that transition (its key: cluster, job, kind, discriminator) is on the record."""
        query = sa.select(events.c.id).where(events.c.event_key == event.key)
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    # -------------------------------------------------------------------- reads
    def cluster(self, uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(clusters).where(clusters.c.cluster_uid == uid)).mappings().first()
        return dict(row) if row else None

    def job(self, uid: str, submission_id: str) -> dict[str, Any] | None:
        query = sa.select(jobs).where(jobs.c.cluster_uid == uid, jobs.c.submission_id == submission_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row else None

    def latest_job(self, submission_id: str) -> dict[str, Any] | None:
        """The newest record of a job by its submission id, with its cluster's name, backend and deletion
        (``cluster_name``, ``cluster_backend``, ``cluster_deleted_at``): what a job is looked up by when only
        its id is known (the CLI), live or long gone."""
        query = (
            sa.select(
                jobs,
                clusters.c.name.label("cluster_name"),
                clusters.c.backend.label("cluster_backend"),
                clusters.c.deleted_at.label("cluster_deleted_at"),
            )
            .join(clusters, clusters.c.cluster_uid == jobs.c.cluster_uid, isouter=True)
            .where(jobs.c.submission_id == submission_id)
            .order_by(jobs.c.updated_at.desc())
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row else None

    def events_of(self, uid: str) -> list[dict[str, Any]]:
        query = sa.select(events).where(events.c.cluster_uid == uid).order_by(events.c.occurred_at, events.c.id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def latest_job_of_task(self, dag_id: str, task_id: str, run_id: str, map_index: int) -> dict[str, Any] | None:
        """The newest record of the Ray job a task instance runs (any try), or None."""
        query = (
            sa.select(jobs)
            .where(
                jobs.c.dag_id == dag_id,
                jobs.c.task_id == task_id,
                jobs.c.run_id == run_id,
                jobs.c.map_index == map_index,
            )
            .order_by(jobs.c.updated_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def audit_trail(
        self, team: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Audit events (actions and authorization decisions), oldest first, of one acting team and a
        time range if given."""
        query = sa.select(events).where(events.c.actor.is_not(None))
        if team is not None:
            query = query.where(events.c.team == team)
        if since is not None:
            query = query.where(events.c.occurred_at >= since)
        if until is not None:
            query = query.where(events.c.occurred_at < until)
        with self.engine.connect() as connection:
            return [
                dict(row) for row in connection.execute(query.order_by(events.c.occurred_at, events.c.id)).mappings()
            ]

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
