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
