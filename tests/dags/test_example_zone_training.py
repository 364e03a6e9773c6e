"""The shipped example DAG trains every zone and leaves no cluster behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from airflow.utils.state import DagRunState

from ..kube_emulator.kuberay_controller import wait_for

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


@pytest.mark.usefixtures("airflow_db", "shared_cluster")
def test_params_never_run_as_commands_and_a_failed_training_fails_the_run(tmp_path, local_backend):
    """A hostile ``output_dir`` is a directory name, not a second command; a training that fails fails
    the run (the cluster's deletion is a teardown, which never decides the run's state) and the
    teardown still deletes the cluster."""
    from airflow.utils.state import TaskInstanceState

    from ..test_dags.shipped_dags import example_zone_training

    marker = tmp_path / "pwned"
    hostile = f"{tmp_path}/o; touch {marker} #"
    run = example_zone_training.test(run_conf={"zones": 3, "output_dir": hostile})
    assert run.state == DagRunState.SUCCESS
    assert not marker.exists(), "a param ran as a shell command"
    (out,) = Path(hostile).iterdir()
    assert json.loads((out / "summary.json").read_text())["zones"] == 3

    failed = example_zone_training.test(run_conf={"zones": 3, "output_dir": "/proc/arp-cannot-write-here"})
    assert failed.get_task_instance("train_zones").state == TaskInstanceState.FAILED
    assert failed.get_task_instance("delete_cluster").state == TaskInstanceState.SUCCESS
    assert failed.state == DagRunState.FAILED
    assert local_backend.describe_cluster("zone-training") is None
