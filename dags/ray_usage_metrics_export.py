"""Export Ray usage of each data interval to Parquet, shipped with airflow-ray-platform.

Reads the lifecycle state store (jobs that ended in the interval, clusters alive in it) and writes
``jobs``, ``clusters`` and ``team_rollup`` Parquet files partitioned by date. Re-running or backfilling
an interval replaces its files. Costs come from the ``prices`` param (per CPU-hour, GPU-hour and
GiB-hour of memory), over the provider's ``DEFAULT_PRICES``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, task
from airflow.timetables.interval import CronDataIntervalTimetable

DEFAULT_OUTPUT = os.environ.get("RAY_USAGE_OUTPUT", str(Path.cwd() / "demo-output" / "usage"))

with DAG(
    dag_id="ray_usage_metrics_export",
    description="Ray job and cluster usage per data interval, as Parquet, for cost attribution",
    # Daily data intervals ([midnight, next midnight)); "@daily" alone gives zero-width intervals in Airflow 3.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ray", "maintenance"],
    params={
        "output_dir": Param(DEFAULT_OUTPUT, type="string"),
        "state_store_conn_id": Param(None, type=["null", "string"]),
        "prices": Param(
            None,
            type=["null", "object"],
            description="Per-hour prices (cpu_hour, gpu_hour, memory_gib_hour); null or missing keys: "
            "airflow_ray_platform.records.prices.DEFAULT_PRICES",
        ),
        "include_audit": Param(False, type="boolean", description="Also export the interval's audit trail."),
    },
) as dag:

    @task
    def export_usage(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from airflow_ray_platform.records.state_store import StateStore
        from airflow_ray_platform.records.usage_export import export_interval

        start, end = data_interval_start, data_interval_end
        if start == end:  # a run without a data interval exports the day that ends at its date
            start = end - timedelta(days=1)
        store = StateStore.from_airflow_connection(params["state_store_conn_id"])
        store.migrate()
        result = export_interval(
            store, params["output_dir"], start, end, params["prices"], include_audit=bool(params["include_audit"])
        )
        print(f"exported {result.jobs} job(s) and {result.clusters} cluster(s) of [{start}, {end}) to:")
        print("\n".join(result.files))
        return {"jobs": result.jobs, "clusters": result.clusters, "files": result.files}

    export_usage()
