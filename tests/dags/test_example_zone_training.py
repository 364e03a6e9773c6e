"""The shipped example DAG trains every zone and leaves no cluster behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from airflow.utils.state import DagRunState

from ..waiting import wait_for

DAGS = Path(__file__).parents[2] / "dags"


def test_shipped_dags_parse_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert "example_zone_training" in bag.dag_ids


@pytest.mark.usefixtures("airflow_db")
def test_example_trains_every_zone_and_deletes_its_cluster(each_backend, tmp_path, local_backend):
    """The same DAG, unchanged, on the local backend and on (emulated) Kubernetes with KubeRay."""
    from ..test_dags.shipped_dags import example_zone_training

    backend = each_backend
    run = example_zone_training.test(run_conf={"zones": 24, "output_dir": str(tmp_path)})
    assert run.state == DagRunState.SUCCESS
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zones"] == 24
    zones = sorted((out / "zones").iterdir())
    assert [z.name for z in zones] == [f"zone-{i:05d}" for i in range(24)]
    for zone in zones:
        metrics = json.loads((zone / "metrics.json").read_text())
        model = np.load(zone / "model.npz")
        assert model["weights"].shape == (24,)
        assert metrics["r2"] > 0.5  # a ridge model on linear synthetic data fits it
    assert backend.describe_cluster("zone-training") is None
    # (through KubeRay, the controller stops the processes once it sees the RayCluster gone)
    wait_for(lambda: local_backend.describe_cluster("zone-training") is None)


def _other_running_run(run_id: str):
    """A DAG run of the example that Airflow's metadata DB says is running (as in a backfill)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        session.add(
            DagRun("example_zone_training", run_id, run_type=DagRunType.BACKFILL_JOB, state=DagRunState.RUNNING)
        )


def _finish_run(run_id: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagRun).filter(DagRun.run_id == run_id).update({"state": DagRunState.SUCCESS})


@pytest.mark.usefixtures("airflow_db", "shared_cluster")
def test_params_never_run_as_commands_and_a_failed_training_fails_the_run(tmp_path, local_backend, capfd):
    """A hostile ``output_dir`` is a directory name, not a second command; a training that fails fails
    the run (the cluster's release is a teardown, which never decides the run's state). Another run
    of the DAG that still runs keeps the shared cluster alive through the first run's teardown; once it
    has ended, the next teardown deletes the cluster."""
    from airflow.utils.state import TaskInstanceState

    from airflow_ray_platform.backends.base import Lease
    from airflow_ray_platform.spec.models import load_job_configuration
    from airflow_ray_platform.spec.naming import TaskIdentity, cluster_labels
    from airflow_ray_platform.spec.timestamps import utc_now

    from ..test_dags.shipped_dags import example_zone_training

    other = "backfill__2026-01-02T00:00:00+00:00"
    _other_running_run(other)
    config = load_job_configuration(example_zone_training.get_task("create_cluster").job_configuration)
    holder = TaskIdentity("example_zone_training", "create_cluster", other)
    labels = cluster_labels(  # as that run's create_cluster stamped it: a cluster the provider manages
        owner=config.owner, team=config.team, idle_timeout_seconds=1800, max_lifetime_seconds=86400, identity=holder
    )
    local_backend.create_or_get_cluster("zone-training", config.cluster, labels, Lease(holder, utc_now()))

    marker = tmp_path / "pwned"
    hostile = f"{tmp_path}/o; touch {marker} #"
    run = example_zone_training.test(run_conf={"zones": 3, "output_dir": hostile})
    assert run.state == DagRunState.SUCCESS
    assert not marker.exists(), "a param ran as a shell command"
    (out,) = Path(hostile).iterdir()
    assert json.loads((out / "summary.json").read_text())["zones"] == 3
    kept = local_backend.describe_cluster("zone-training")
    assert kept is not None, "a run's teardown deleted the cluster another running run holds"
    assert [lease.holder.run_id for lease in kept.leases] == [other]
    assert f"kept: still leased by example_zone_training run {other}" in "".join(capfd.readouterr())

    _finish_run(other)  # it ended without releasing its lease: the lease expires with it
    failed = example_zone_training.test(run_conf={"zones": 3, "output_dir": "/proc/arp-cannot-write-here"})
    assert failed.get_task_instance("train_zones").state == TaskInstanceState.FAILED
    assert failed.get_task_instance("delete_cluster").state == TaskInstanceState.SUCCESS
    assert failed.state == DagRunState.FAILED
    assert local_backend.describe_cluster("zone-training") is None
