"""Reading the records back: jobs and clusters, filtered and paged on the server, and usage aggregated in
SQL, for the Ray view in the Airflow UI and the CLI.

Every list is one indexed query for one page (migration 0004), with its total; every summary is a
``GROUP BY`` in the database, never rows pulled into Python to be added up, so both answer in
milliseconds over 100,000 jobs. Per-job CPU-hours and cost are ``usage_export.job_table``'s own
columns, computed on the page's rows; the summary adds the same terms up in SQL (requested CPUs times
hours, priced by ``prices.DEFAULT_PRICES``).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from airflow_ray_platform.records.prices import DEFAULT_PRICES, estimated_cost
from airflow_ray_platform.records.state_store import StateStore, clusters, events, jobs
from airflow_ray_platform.records.usage_export import JOB_COLUMNS, job_table

#: The largest page a list serves.
MAX_PAGE_SIZE = 500


class hours_between(FunctionElement):
    """``end - start`` in hours, in each database's own date arithmetic."""

    type = sa.Float()
    inherit_cache = True
    name = "hours_between"


@compiles(hours_between, "sqlite")
def _hours_sqlite(element: hours_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 24.0)"


@compiles(hours_between, "postgresql")
def _hours_postgresql(element: hours_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"(EXTRACT(EPOCH FROM ({end} - {start})) / 3600.0)"


@compiles(hours_between, "mysql")
@compiles(hours_between, "mariadb")
def _hours_mysql(element: hours_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"(TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 3.6e9)"  # a float literal: DECIMAL division rounds


@dataclass(frozen=True)
class Scope:
    """What a reader may see: jobs of ``teams`` (None: every team) and of ``dag_ids`` (None: every DAG);
    clusters are a team's, not a DAG's, so only ``teams`` narrows them."""

    teams: Collection[str] | None = None
    dag_ids: Collection[str] | None = None

    def jobs(self, query: sa.Select) -> sa.Select:
        if self.teams is not None:
            query = query.where(jobs.c.team.in_(list(self.teams)))
        if self.dag_ids is not None:
            query = query.where(jobs.c.dag_id.in_(list(self.dag_ids)))
        return query

    def clusters(self, query: sa.Select) -> sa.Select:
        return query if self.teams is None else query.where(clusters.c.team.in_(list(self.teams)))

    def sees_job(self, row: Mapping[str, Any]) -> bool:
        return (self.teams is None or row["team"] in self.teams) and (
            self.dag_ids is None or row["dag_id"] in self.dag_ids
        )


#: Everything (no policy and every DAG, or a user whom Airflow lets read all of it).
EVERYTHING = Scope()


@dataclass(frozen=True)
class JobFilter:
    """What a jobs list is narrowed to: what the reader may see, then the filters asked for."""

    scope: Scope = EVERYTHING
    team: str | None = None
    owner: str | None = None
    dag_id: str | None = None
    state: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self, query: sa.Select) -> sa.Select:
        query = self.scope.jobs(query)
        for column, value in ((jobs.c.team, self.team), (jobs.c.owner, self.owner), (jobs.c.dag_id, self.dag_id)):
            if value:
                query = query.where(column == value)
        if self.state:
            query = query.where(jobs.c.state == self.state.upper())
        if self.since is not None:
            query = query.where(jobs.c.submitted_at >= self.since)
        if self.until is not None:
            query = query.where(jobs.c.submitted_at < self.until)
        return query


def _page(page: int, page_size: int) -> tuple[int, int]:
    size = max(1, min(page_size, MAX_PAGE_SIZE))
    return (max(page, 1) - 1) * size, size


_JOB_VIEW = [
    *(jobs.c[name] for name in JOB_COLUMNS),
    jobs.c.message,
    jobs.c.log_uri,
    clusters.c.name.label("cluster_name"),
    clusters.c.backend.label("backend"),
    clusters.c.dashboard_url.label("dashboard_url"),
    clusters.c.deleted_at.label("cluster_deleted_at"),
]


def _with_usage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``job_table``'s derived columns (queue wait, duration, CPU-/GPU-hours, cost)."""
    if not rows:
        return rows
    raw = pa.Table.from_pylist([{name: row[name] for name in JOB_COLUMNS} for row in rows])
    derived = job_table(raw, DEFAULT_PRICES).to_pylist()
    keep = ("queue_wait_s", "duration_s", "cpu_hours", "gpu_hours", "cost_estimate")
    return [{**row, **{key: usage[key] for key in keep}} for row, usage in zip(rows, derived, strict=True)]


def list_jobs(store: StateStore, where: JobFilter, page: int = 1, page_size: int = 50) -> tuple[list[dict], int]:
    """(one page of jobs, newest submitted first, with their usage; the total matching)."""
    offset, size = _page(page, page_size)
    joined = jobs.join(clusters, clusters.c.cluster_uid == jobs.c.cluster_uid, isouter=True)
    query = where.where(sa.select(*_JOB_VIEW).select_from(joined))
    query = query.order_by(jobs.c.submitted_at.desc(), jobs.c.submission_id).offset(offset).limit(size)
    count = where.where(sa.select(sa.func.count()).select_from(jobs))
    with store.engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
        total = connection.execute(count).scalar_one()
    return _with_usage(rows), total


#: A job's record says it has not ended yet.
ACTIVE_STATES = ("PENDING", "RUNNING")


def running_jobs(store: StateStore, scope: Scope = EVERYTHING, limit: int = 200) -> list[dict]:
    """The jobs whose records say they are pending or running, oldest submitted first (the ``state,
    submitted_at`` index), with their usage so far."""
    joined = jobs.join(clusters, clusters.c.cluster_uid == jobs.c.cluster_uid, isouter=True)
    query = scope.jobs(sa.select(*_JOB_VIEW).select_from(joined).where(jobs.c.state.in_(ACTIVE_STATES)))
    query = query.order_by(jobs.c.submitted_at, jobs.c.submission_id).limit(limit)
    with store.engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
    return _with_usage(rows)


def job_detail(store: StateStore, submission_id: str, scope: Scope = EVERYTHING) -> dict | None:
    """The newest record of one job with its usage, what it handed back (``result``: up to a megabyte, so
    never in a list) and its events (None: none, or not in the reader's ``scope``)."""
    joined = jobs.join(clusters, clusters.c.cluster_uid == jobs.c.cluster_uid, isouter=True)
    query = (
        sa.select(*_JOB_VIEW, jobs.c.result)
        .select_from(joined)
        .where(jobs.c.submission_id == submission_id)
        .order_by(jobs.c.updated_at.desc())
        .limit(1)
    )
    with store.engine.connect() as connection:
        row = connection.execute(query).mappings().first()
        if row is None or not scope.sees_job(row):
            return None
        happened = connection.execute(
            sa.select(events.c.occurred_at, events.c.kind, events.c.reason, events.c.actor)
            .where(events.c.cluster_uid == row["cluster_uid"])
            .where(sa.or_(events.c.submission_id == submission_id, events.c.submission_id.is_(None)))
            .order_by(events.c.occurred_at, events.c.id)
        ).mappings()
        events_of_job = [dict(event) for event in happened]
    return {**_with_usage([dict(row)])[0], "events": events_of_job}


def list_clusters(
    store: StateStore, scope: Scope = EVERYTHING, page: int = 1, page_size: int = 50
) -> tuple[list[dict], int]:
    """(one page of cluster incarnations, newest first, each with its last garbage-collection decision;
    the total)."""
    offset, size = _page(page, page_size)
    query = scope.clusters(sa.select(clusters))
    count = scope.clusters(sa.select(sa.func.count()).select_from(clusters))
    query = query.order_by(clusters.c.requested_at.desc(), clusters.c.cluster_uid).offset(offset).limit(size)
    with store.engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
        total = connection.execute(count).scalar_one()
        uids = [row["cluster_uid"] for row in rows]
        latest = (
            sa.select(events.c.cluster_uid, sa.func.max(events.c.id).label("id"))
            .where(events.c.cluster_uid.in_(uids), sa.or_(events.c.kind.like("gc_%"), events.c.kind == "deleted_by_gc"))
            .group_by(events.c.cluster_uid)
            .subquery()
        )
        decided = connection.execute(
            sa.select(events.c.cluster_uid, events.c.kind, events.c.reason, events.c.occurred_at).join(
                latest, latest.c.id == events.c.id
            )
        ).mappings()
        decisions = {row["cluster_uid"]: dict(row) for row in decided}
        usage = _usage_by_cluster(connection, uids, scope)
    for row in rows:
        row["last_gc_decision"] = decisions.get(row["cluster_uid"])
        row["usage"] = usage.get(row["cluster_uid"])
    return rows, total


def _usage_by_cluster(connection: sa.Connection, uids: list[str], scope: Scope) -> dict[str, dict[str, Any]]:
    """Per cluster incarnation: its jobs (those the reader may see), how many failed, and their
    CPU-/GPU-hours and cost, added up in SQL."""
    hours = hours_between(jobs.c.started_at, jobs.c.ended_at)
    query = scope.jobs(
        sa.select(
            jobs.c.cluster_uid,
            sa.func.count().label("jobs"),
            sa.func.sum(sa.case((jobs.c.state == "FAILED", 1), else_=0)).label("failed"),
            sa.func.sum(jobs.c.requested_cpu * hours).label("cpu_hours"),
            sa.func.sum(jobs.c.requested_gpu * hours).label("gpu_hours"),
            sa.func.sum(jobs.c.requested_memory_bytes / 1024.0**3 * hours).label("memory_gib_hours"),
        ).where(jobs.c.cluster_uid.in_(uids))
    ).group_by(jobs.c.cluster_uid)
    found = {}
    for row in connection.execute(query).mappings():
        cpu, gpu, gib = (float(row[key] or 0.0) for key in ("cpu_hours", "gpu_hours", "memory_gib_hours"))
        found[row["cluster_uid"]] = {
            "jobs": int(row["jobs"]),
            "failed": int(row["failed"] or 0),
            "cpu_hours": cpu,
            "gpu_hours": gpu,
            "cost_estimate": estimated_cost(cpu, gpu, gib),
        }
    return found


def usage_by_team_day(store: StateStore, start: datetime, end: datetime, scope: Scope = EVERYTHING) -> dict[str, Any]:
    """Jobs that ended in [start, end), per team and UTC day: jobs, succeeded, CPU-/GPU-/GiB-hours and
    cost; and per team the cluster wait (requested -> ready) p50 / p95 of clusters requested then."""
    hours = hours_between(jobs.c.started_at, jobs.c.ended_at)
    day = sa.func.date(jobs.c.ended_at).label("day")
    cpu_hours = sa.func.sum(jobs.c.requested_cpu * hours).label("cpu_hours")
    gpu_hours = sa.func.sum(jobs.c.requested_gpu * hours).label("gpu_hours")
    gib_hours = sa.func.sum(jobs.c.requested_memory_bytes / 1024.0**3 * hours).label("memory_gib_hours")
    succeeded = sa.func.sum(sa.case((jobs.c.state == "SUCCEEDED", 1), else_=0)).label("succeeded")
    query = (
        sa.select(jobs.c.team, day, sa.func.count().label("jobs"), succeeded, cpu_hours, gpu_hours, gib_hours)
        .where(jobs.c.ended_at >= start, jobs.c.ended_at < end)
        .group_by(jobs.c.team, day)
        .order_by(day, jobs.c.team)
    )
    waits = sa.select(clusters.c.team, hours_between(clusters.c.requested_at, clusters.c.ready_at)).where(
        clusters.c.requested_at >= start, clusters.c.requested_at < end, clusters.c.ready_at.is_not(None)
    )
    query, waits = scope.jobs(query), scope.clusters(waits)
    with store.engine.connect() as connection:
        days = [dict(row) for row in connection.execute(query).mappings()]
        wait_rows = connection.execute(waits).all()
    for row in days:
        row["day"] = str(row["day"])
        for key in ("cpu_hours", "gpu_hours", "memory_gib_hours"):
            row[key] = float(row[key] or 0.0)
        row["succeeded"] = int(row["succeeded"] or 0)
        row["cost_estimate"] = estimated_cost(row["cpu_hours"], row["gpu_hours"], row["memory_gib_hours"])
    by_team: dict[str | None, list[float]] = {}
    for team, wait_hours in wait_rows:
        if wait_hours is not None:
            by_team.setdefault(team, []).append(float(wait_hours) * 3600)
    teams = []
    for team in sorted({row["team"] for row in days} | set(by_team), key=lambda name: name or ""):
        mine = [row for row in days if row["team"] == team]
        total = sum(row["jobs"] for row in mine)
        seconds = sorted(by_team.get(team, []))
        teams.append(
            {
                "team": team,
                "jobs": total,
                "success_rate": sum(row["succeeded"] for row in mine) / total if total else None,
                "cpu_hours": sum(row["cpu_hours"] for row in mine),
                "gpu_hours": sum(row["gpu_hours"] for row in mine),
                "cost_estimate": sum(row["cost_estimate"] for row in mine),
                "cluster_wait_p50_s": statistics.median(seconds) if seconds else None,
                "cluster_wait_p95_s": _quantile(seconds, 0.95) if seconds else None,
            }
        )
    return {"since": start, "until": end, "days": days, "teams": teams}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default, as ``pyarrow.compute.quantile``)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
