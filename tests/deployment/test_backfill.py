"""The main job under a real deployment: a backfill of the example DAG beside other runs of it, all
deferrable, sharing one cluster through leases."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from .harness import Deployment

DAG_ID = "example_zone_training"
HOLDER = "hold_zone_training_cluster"
BACKFILL_DATES = ("2026-01-01T00:00:00Z", "2026-01-05T12:00:00Z")  # five daily runs, at 02:00


def _finished(api, dag_id: str, expected: int):
    runs = api.runs(dag_id)
    done = [run for run in runs if run["state"] in ("success", "failed")]
    return runs if len(runs) >= expected and len(done) == len(runs) else None


def _leases(deployment: Deployment) -> list[str]:
    info = deployment.backend.describe_cluster("zone-training")
    return [] if info is None else sorted({lease.holder.dag_id for lease in info.leases})


def test_a_backfill_shares_one_cluster_and_a_failed_training_fails_only_its_run(deployment: Deployment):
    api = deployment.api
    output = Path(deployment.env["ZONE_TRAINING_OUTPUT"])
    release = deployment.root / "release-zone-training"
    for dag_id in (DAG_ID, HOLDER):
        api.unpause(dag_id)
    # A run of another DAG creates and leases the cluster, and holds it until the test releases it.
    holder = api.trigger(HOLDER, {"release_file": str(release)})
    api.wait("the holder to lease the cluster", lambda: HOLDER in _leases(deployment), timeout=300)

    api.backfill(DAG_ID, *BACKFILL_DATES, conf={"zones": 6, "output_dir": str(output / "backfill")}, max_active_runs=3)
    large = api.trigger(DAG_ID, {"zones": 60, "output_dir": str(output / "large")})
    failing = api.trigger(DAG_ID, {"zones": 3, "output_dir": "/proc/arp-cannot-write-here"})

    runs = api.wait("every run of the example to finish", lambda: _finished(api, DAG_ID, 7), timeout=1200, interval=5)
    states = {run["dag_run_id"]: run["state"] for run in runs}
    backfilled = [run for run in runs if run["run_type"] == "backfill"]
    assert len(backfilled) == 5
    assert {run["state"] for run in backfilled} == {"success"}, states
    assert states[large] == "success", states
    assert states[failing] == "failed", states  # the teardown succeeded, but never decides the run's state
    failed_tis = api.task_instances(DAG_ID, failing)
    assert (failed_tis["train_zones"]["state"], failed_tis["delete_cluster"]["state"]) == ("failed", "success")

    # Every run wrote its own outputs, complete.
    summaries = [json.loads(path.read_text()) for path in (output / "backfill").glob("*/summary.json")]
    assert sorted(summary["zones"] for summary in summaries) == [6] * 5
    (large_summary,) = (output / "large").glob("*/summary.json")
    assert json.loads(large_summary.read_text())["zones"] == 60

    # Each example run released its lease at its end and left the cluster to the run still holding it.
    assert _leases(deployment) == [HOLDER]
    task_logs = _task_logs(deployment)
    assert task_logs.count(f"kept: still leased by {HOLDER} run {holder}") >= 7

    release.touch()  # the last holder's teardown deletes the cluster
    api.wait("the holder's run to end", lambda: _finished(api, HOLDER, 1), timeout=300)
    assert api.runs(HOLDER)[0]["state"] == "success"
    assert deployment.backend.describe_cluster("zone-training") is None
    with deployment.state_store().connect() as connection:
        starts = connection.execute(
            sa.text("SELECT state, deleted_reason FROM arp_clusters WHERE name = 'zone-training'")
        ).all()
    assert len(starts) == 1, starts  # one cluster start for eight runs
    assert starts[0].state == "DELETED"
    assert "this run released its lease and no other run holds one" in starts[0].deleted_reason


def _task_logs(deployment: Deployment) -> str:
    logs = Path(deployment.env["AIRFLOW_HOME"]) / "logs"
    return "".join(path.read_text(errors="replace") for path in logs.rglob("*.log"))
