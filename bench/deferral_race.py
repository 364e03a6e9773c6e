"""Airflow 3.3.2's resume-after-defer race under a real deployment, counted, and its window measured.

A deferred task whose trigger fires before the scheduler has processed the executor's report of the
deferring process's exit is failed by Airflow: "... finished with state success, but the task
instance's state attribute is queued" (apache/airflow#67287, #71580, #72716; recorded in Airflow's
event log as "state mismatch"). The worst case is a wait that ends at once after the deferral: here a
backfill of RUNS daily runs (``ray_job_deferred_daily``, no retry, at most MAX_ACTIVE_RUNS at a time)
of a deferrable RayJobOperator whose job ends 2 s after its submission, on the tests' deployment
harness (api-server, scheduler, dag-processor, triggerer as processes; LocalExecutor; PostgreSQL).

Run once per hold (``[ray_platform] deferral_settle_seconds``: the soonest a trigger fires after its
task deferred), first 0 (no hold: the baseline, where the race shows), then the shipped default, in the
same deployment. Per run: the race window, from the deferral ("Pausing task as DEFERRED" in the task's
log) to the scheduler receiving the executor's event for the deferring process's exit (its log), and
the failures Airflow recorded.
"""

from __future__ import annotations

import os
import re
import statistics
from datetime import date, datetime, timedelta
from pathlib import Path

from airflow_ray_platform import settings
from bench.common import deployment_with_cluster, record
from tests.deployment.harness import Deployment

DAG_ID = "ray_job_deferred_daily"
CLUSTER = "deploy-shared"
RUNS = int(os.environ.get("BENCH_RACE_RUNS", "20"))
MAX_ACTIVE_RUNS = 5
JOB = "python -c 'import time; time.sleep(2)'"
SHIPPED_HOLD = float(settings.OPTIONS["deferral_settle_seconds"]["default"])
HOLDS = [float(h) for h in os.environ.get("BENCH_RACE_HOLDS", f"0,{SHIPPED_HOLD:g}").split(",")]
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)")
_EXIT_EVENT = re.compile(
    r"Received executor event with state success for task instance "
    rf"TaskInstanceKey\(dag_id='{DAG_ID}', task_id='job', run_id='(?P<run>[^']+)', try_number=1"
)


def _when(line: str) -> datetime | None:
    found = _TIMESTAMP.search(line)
    if found is None:
        return None
    moment = datetime.fromisoformat(found.group(1).replace("Z", "+00:00").replace(" ", "T"))
    return moment if moment.tzinfo else None


def _deferrals(deployment: Deployment) -> dict[str, datetime]:
    """Each run's deferral, from its task's log."""
    deferred = {}
    logs = Path(deployment.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}"
    for path in logs.glob("run_id=*/task_id=job/attempt=1.log"):
        run_id = path.parts[-3].removeprefix("run_id=")
        for line in path.read_text(errors="replace").splitlines():
            if "Pausing task as DEFERRED" in line and (moment := _when(line)) is not None:
                deferred[run_id] = moment
                break
    return deferred


def _exit_events(deployment: Deployment) -> dict[str, list[datetime]]:
    """When the scheduler received each run's executor events for try 1 (the deferring exit, then the end)."""
    events: dict[str, list[datetime]] = {}
    for line in deployment.log("airflow-scheduler").splitlines():
        found = _EXIT_EVENT.search(line)
        if found is not None and (moment := _when(line)) is not None:
            events.setdefault(found.group("run"), []).append(moment)
    return events


def backfill(deployment: Deployment, hold: float, first_day: date) -> dict:
    """One backfill of RUNS runs with ``hold``; its runs' outcomes and race windows."""
    deployment.env["AIRFLOW__RAY_PLATFORM__DEFERRAL_SETTLE_SECONDS"] = f"{hold:g}"
    deployment.stop("airflow-scheduler")  # the LocalExecutor's task processes are its children
    deployment.start("airflow-scheduler")
    api = deployment.api
    last_day = first_day + timedelta(days=RUNS - 1)
    backfill_id = api.backfill(
        DAG_ID, f"{first_day}T00:00:00Z", f"{last_day}T12:00:00Z", {"entrypoint": JOB}, max_active_runs=MAX_ACTIVE_RUNS
    )

    def ours() -> list[dict]:
        return [
            run
            for run in api.runs(DAG_ID)
            if run["run_type"] == "backfill" and first_day <= date.fromisoformat(run["logical_date"][:10]) <= last_day
        ]

    def finished() -> list[dict] | None:
        runs = ours()
        return runs if len(runs) == RUNS and all(run["state"] in ("success", "failed") for run in runs) else None

    runs = api.wait(f"the backfill with a {hold:g} s hold", finished, timeout=1800, interval=5)
    api.wait("the backfill's completion", lambda: api.get(f"/backfills/{backfill_id}")["completed_at"], 300)
    run_ids = {run["dag_run_id"] for run in runs}
    mismatches = [
        entry
        for entry in api.get("/eventLogs", event="state mismatch", dag_id=DAG_ID, limit=100)["event_logs"]
        if entry["run_id"] in run_ids
    ]
    deferred, exits = _deferrals(deployment), _exit_events(deployment)
    windows = []
    for run_id in sorted(run_ids):
        if run_id in deferred:
            after = [moment for moment in exits.get(run_id, []) if moment >= deferred[run_id]]
            if after:
                windows.append(round((after[0] - deferred[run_id]).total_seconds(), 3))
    failures = {}
    for run in runs:
        if run["state"] == "failed" and len(failures) < 3:
            log = api.client.get(f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/job/logs/1")
            lines = [line for line in log.text.splitlines() if "rror" in line or "xception" in line]
            failures[run["dag_run_id"]] = lines[-3:]
    return {
        "hold_s": hold,
        "failure_examples": failures,
        "runs": RUNS,
        "failed_runs": sum(run["state"] == "failed" for run in runs),
        "state_mismatch_failures": len(mismatches),
        "race_window_s": {
            "measured_runs": len(windows),
            "median": round(statistics.median(windows), 3) if windows else None,
            "max": max(windows, default=None),
        },
        "windows": windows,
    }


def main() -> None:
    with deployment_with_cluster("arp-bench-race-", CLUSTER) as (deployment, _):
        api = deployment.api
        api.wait("the daily DAG", lambda: api.client.get(f"/dags/{DAG_ID}").is_success, 240)
        api.unpause(DAG_ID)
        results = [backfill(deployment, hold, date(2026, 1 + index, 1)) for index, hold in enumerate(HOLDS)]
    record(
        "deferral_race",
        {
            "runner": "tests/deployment harness: api-server, scheduler, dag-processor, triggerer processes; "
            "LocalExecutor; PostgreSQL",
            "job": JOB,
            "max_active_runs": MAX_ACTIVE_RUNS,
            "shipped_hold_s": SHIPPED_HOLD,
            "target": "0 state-mismatch failures in 20 backfill runs with the shipped hold",
            "backfills": results,
        },
    )


if __name__ == "__main__":
    main()
