"""Usage export: the state store's jobs and clusters of one data interval, as Parquet, for cost attribution.

For an interval [start, end) three tables are written under ``<output>/<table>/date=<YYYY-MM-DD>/``
(the interval start's date), each as one file named after the interval: re-running or backfilling an
interval replaces its files, never duplicates them. ``<output>`` is a directory or an ``s3://`` URI
(through the same object storage as persisted logs).

* ``jobs``: one row per job that ended in the interval. Owner, team, dag/task/run, cluster,
  submitted/started/running/ended, queue wait (submission to first seen running; null for a job never
  seen running), final state, and requested cpu/gpu/memory times duration
  (CPU-hours, GPU-hours, GiB-hours) with a cost estimate from the price table, and the CPU / GPU
  utilisation measured from the cluster's Prometheus metrics while the job ran: null where no
  endpoint was reachable (a number is never invented).
* ``clusters``: one row per cluster incarnation alive during the interval. Provisioning wait, lifetime,
  idle time (lifetime minus its jobs' run time, within the interval).
* ``team_rollup``: per team, job count, success rate, and the p50/p95 of the wait for a cluster.
* ``audit`` (with ``include_audit``): the interval's audit trail, one row per authorization decision or
  action, with the acting team and actor.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from airflow_ray_platform.backends.base import LOG_CHUNK_BYTES
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.object_storage import ObjectStorage
from airflow_ray_platform.records.prices import DEFAULT_PRICES
from airflow_ray_platform.records.state_store import StateStore, clusters, events, jobs

JOB_COLUMNS = [
    "cluster_uid",
    "submission_id",
    "owner",
    "team",
    "dag_id",
    "task_id",
    "run_id",
    "map_index",
    "try_number",
    "state",
    "requested_cpu",
    "requested_gpu",
    "requested_memory_bytes",
    "submitted_at",
    "started_at",
    "running_at",
    "ended_at",
    "measured_cpu_utilisation",
    "measured_gpu_utilisation",
]
CLUSTER_COLUMNS = [
    "cluster_uid",
    "backend",
    "name",
    "owner",
    "team",
    "ephemeral",
    "requested_at",
    "ready_at",
    "deleted_at",
]

AUDIT_COLUMNS = ["occurred_at", "team", "actor", "kind", "cluster_uid", "submission_id", "reason"]


@dataclass(frozen=True)
class ExportResult:
    jobs: int
    clusters: int
    files: list[str]


def _selected(store: StateStore, table: sa.Table, columns: list[str]) -> list[sa.ColumnElement]:
    """The columns to select. On SQLite, timestamps come as the stored text: Arrow parses a whole column
    at once, far faster than SQLAlchemy's per-value datetime parsing (most of an export's time)."""
    if store.dialect != "sqlite":
        return [table.c[name] for name in columns]
    return [
        sa.type_coerce(table.c[name], sa.String).label(name)
        if isinstance(table.c[name].type, sa.DateTime)
        else table.c[name]
        for name in columns
    ]


def _read(store: StateStore, query: sa.Select, columns: list[str]) -> pa.Table:
    """Rows of ``query`` as an Arrow table, fetched in batches straight into columns."""
    batches = []
    with store.engine.connect().execution_options(stream_results=True, yield_per=100_000) as connection:
        for partition in connection.execute(query).partitions():
            batches.append(
                pa.Table.from_arrays([pa.array(values) for values in zip(*partition, strict=True)], names=columns)
            )
    if not batches:
        return pa.Table.from_pylist([], schema=pa.schema([(c, pa.null()) for c in columns]))
    return pa.concat_tables(batches, promote_options="default")


def _seconds(end: pa.ChunkedArray, start: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.divide(pc.cast(pc.subtract(end, start), pa.int64()), 1_000_000.0)


def _as_utc(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps as UTC microseconds, whatever the driver returned: SQLite's stored text (naive UTC),
    naive or aware datetimes elsewhere. A naive timestamp cast to a zoned type is read as UTC, which is
    what the store writes."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.timestamp("us"))
    return pc.cast(column, pa.timestamp("us", tz="UTC"))


def job_table(raw: pa.Table, prices: Mapping[str, float]) -> pa.Table:
    """Derived per-job usage columns, computed column-wise."""
    if raw.num_rows == 0:
        return raw
    submitted, started, running, ended = (
        _as_utc(raw[c]) for c in ("submitted_at", "started_at", "running_at", "ended_at")
    )
    hours = pc.divide(_seconds(ended, started), 3600.0)
    cpu_hours = pc.multiply(pc.cast(raw["requested_cpu"], pa.float64()), hours)
    gpu_hours = pc.multiply(pc.cast(raw["requested_gpu"], pa.float64()), hours)
    gib_hours = pc.multiply(pc.divide(pc.cast(raw["requested_memory_bytes"], pa.float64()), 1024.0**3), hours)
    cost = pc.add(
        pc.add(
            pc.multiply(pc.fill_null(cpu_hours, 0.0), prices["cpu_hour"]),
            pc.multiply(pc.fill_null(gpu_hours, 0.0), prices["gpu_hour"]),
        ),
        pc.multiply(pc.fill_null(gib_hours, 0.0), prices["memory_gib_hour"]),
    )
    for measured in ("measured_cpu_utilisation", "measured_gpu_utilisation"):  # all-null reads as type null
        raw = raw.set_column(raw.schema.get_field_index(measured), measured, pc.cast(raw[measured], pa.float64()))
    return (
        raw.set_column(raw.schema.get_field_index("submitted_at"), "submitted_at", submitted)
        .set_column(raw.schema.get_field_index("started_at"), "started_at", started)
        .set_column(raw.schema.get_field_index("running_at"), "running_at", running)
        .set_column(raw.schema.get_field_index("ended_at"), "ended_at", ended)
        .append_column("queue_wait_s", _seconds(running, submitted))
        .append_column("duration_s", _seconds(ended, started))
        .append_column("cpu_hours", cpu_hours)
        .append_column("gpu_hours", gpu_hours)
        .append_column("memory_gib_hours", gib_hours)
        .append_column("cost_estimate", cost)
    )


def cluster_table(raw: pa.Table, job_rows: pa.Table, start: datetime, end: datetime) -> pa.Table:
    if raw.num_rows == 0:
        return raw
    requested, ready, deleted = (_as_utc(raw[c]) for c in ("requested_at", "ready_at", "deleted_at"))
    window_end = pc.fill_null(deleted, pa.scalar(end, pa.timestamp("us", tz="UTC")))
    start_scalar = pa.scalar(start, pa.timestamp("us", tz="UTC"))
    window_start = pc.if_else(pc.greater(requested, start_scalar), requested, start_scalar)
    lifetime = _seconds(window_end, requested)
    busy = {}
    if job_rows.num_rows:
        grouped = job_rows.group_by("cluster_uid").aggregate([("duration_s", "sum")])
        busy = dict(zip(grouped["cluster_uid"].to_pylist(), grouped["duration_s_sum"].to_pylist(), strict=True))
    busy_s = pa.array([busy.get(uid) or 0.0 for uid in raw["cluster_uid"].to_pylist()], pa.float64())
    in_window = pc.max_element_wise(_seconds(window_end, window_start), 0.0)
    return (
        raw.set_column(raw.schema.get_field_index("requested_at"), "requested_at", requested)
        .set_column(raw.schema.get_field_index("ready_at"), "ready_at", ready)
        .set_column(raw.schema.get_field_index("deleted_at"), "deleted_at", deleted)
        .append_column("provisioning_wait_s", _seconds(ready, requested))
        .append_column("lifetime_s", lifetime)
        .append_column("idle_s", pc.max_element_wise(pc.subtract(in_window, busy_s), 0.0))
    )


def team_rollup(job_rows: pa.Table, cluster_rows: pa.Table) -> pa.Table:
    """Per team: jobs, success rate, and the cluster wait (provisioning) p50 / p95."""
    teams = sorted(
        set(job_rows["team"].to_pylist() if job_rows.num_rows else [])
        | set(cluster_rows["team"].to_pylist() if cluster_rows.num_rows else []) - {None}
    )
    rows = []
    for team in teams:
        mine = job_rows.filter(pc.equal(job_rows["team"], team)) if job_rows.num_rows else job_rows
        waits = (
            cluster_rows.filter(pc.equal(cluster_rows["team"], team))["provisioning_wait_s"]
            if cluster_rows.num_rows
            else pa.chunked_array([], pa.float64())
        )
        waits = pc.drop_null(waits)
        quantiles = pc.quantile(waits, q=[0.5, 0.95]).to_pylist() if len(waits) else [None, None]
        succeeded = pc.sum(pc.equal(mine["state"], "SUCCEEDED")).as_py() if mine.num_rows else 0
        rows.append(
            {
                "team": team,
                "jobs": mine.num_rows,
                "success_rate": succeeded / mine.num_rows if mine.num_rows else None,
                "cluster_wait_p50_s": quantiles[0],
                "cluster_wait_p95_s": quantiles[1],
            }
        )
    schema = pa.schema(
        [
            ("team", pa.string()),
            ("jobs", pa.int64()),
            ("success_rate", pa.float64()),
            ("cluster_wait_p50_s", pa.float64()),
            ("cluster_wait_p95_s", pa.float64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _write(table: pa.Table, output: str, name: str, start: datetime, end: datetime, s3_options: Mapping) -> str:
    """One file per (table, interval), replaced as a whole when the interval is exported again:
    locally by an atomic rename, on S3 by a single (multipart) upload of the same key."""
    key = f"{name}/date={start:%Y-%m-%d}/interval-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.parquet"
    if output.startswith("s3://"):
        with tempfile.TemporaryFile() as local:
            pq.write_table(table, local)
            local.seek(0)
            return ObjectStorage(output, **s3_options).write(key, iter(lambda: local.read(LOG_CHUNK_BYTES), b""))
    final = Path(output.removeprefix("file://")) / key
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_suffix(f".tmp-{os.getpid()}")
    pq.write_table(table, temporary)
    temporary.replace(final)
    return str(final)


def interval_tables(
    store: StateStore, start: datetime, end: datetime, prices: Mapping[str, float] | None = None
) -> tuple[pa.Table, pa.Table]:
    """(jobs, clusters) of the interval [start, end), with their derived usage columns: what the export
    writes and the summary adds up."""
    prices = {**DEFAULT_PRICES, **(prices or {})}
    raw_jobs = _read(
        store,
        sa.select(*_selected(store, jobs, JOB_COLUMNS)).where(jobs.c.ended_at >= start, jobs.c.ended_at < end),
        JOB_COLUMNS,
    )
    alive = sa.and_(
        clusters.c.requested_at < end, sa.or_(clusters.c.deleted_at.is_(None), clusters.c.deleted_at >= start)
    )
    raw_clusters = _read(store, sa.select(*_selected(store, clusters, CLUSTER_COLUMNS)).where(alive), CLUSTER_COLUMNS)
    job_rows = job_table(raw_jobs, prices)
    return job_rows, cluster_table(raw_clusters, job_rows, start, end)


def export_interval(
    store: StateStore,
    output: str | Path,
    start: datetime,
    end: datetime,
    prices: Mapping[str, float] | None = None,
    s3_options: Mapping[str, Any] | None = None,
    include_audit: bool = False,
) -> ExportResult:
    """Export the interval [start, end) from the state store to Parquet under ``output``: a directory,
    ``file://…``, or ``s3://bucket/prefix`` (boto3; endpoint and credentials from the environment or
    ``s3_options``, as for persisted logs); with ``include_audit``, the interval's audit trail too."""
    started = time.monotonic()
    output = str(output)
    s3_options = dict(s3_options or {})
    job_rows, cluster_rows = interval_tables(store, start, end, prices)
    tables = {"jobs": job_rows, "clusters": cluster_rows, "team_rollup": team_rollup(job_rows, cluster_rows)}
    if include_audit:
        in_interval = sa.and_(events.c.actor.is_not(None), events.c.occurred_at >= start, events.c.occurred_at < end)
        query = sa.select(*_selected(store, events, AUDIT_COLUMNS)).where(in_interval).order_by(events.c.occurred_at)
        audit = _read(store, query, AUDIT_COLUMNS)
        if audit.num_rows:
            audit = audit.set_column(0, "occurred_at", _as_utc(audit.column("occurred_at")))
        tables["audit"] = audit
    files = [_write(table, output, name, start, end, s3_options) for name, table in tables.items()]
    for name, table in tables.items():
        metrics.USAGE_EXPORT_ROWS(table.num_rows, table=name)
    metrics.USAGE_EXPORT_DURATION(time.monotonic() - started)
    return ExportResult(job_rows.num_rows, cluster_rows.num_rows, files)
