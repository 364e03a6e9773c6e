"""KubeRay manifests: golden files for representative configurations, strict CRD validation (v1.7.0)."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from airflow_ray_platform.backends.kuberay.manifests import render_ray_cluster, render_ray_job
from airflow_ray_platform.backends.kuberay.schema import CRD_FILES, CRDS, ManifestValidationError, validate_manifest
from airflow_ray_platform.spec.models import JobConfigurationError, load_job_configuration
from airflow_ray_platform.spec.naming import TaskIdentity, cluster_labels

GOLDEN = Path(__file__).parent / "kuberay_golden"
SHARED_CRDS = Path(__file__).parents[3] / "shared" / "kuberay" / "v1.7.0"
IDENTITY = TaskIdentity("zone_training", "train", "manual__2026-06-01T00:00:00+00:00", -1)
BASE = {"name": "zones", "owner": "data-science", "team": "forecasting"}
JOB = {
    "entrypoint": "python train_zones.py --zones 200",
    "runtime_env": {"pip": ["numpy"], "env_vars": {"A": "1"}},
    "entrypoint_num_cpus": 1,
    "timeout": 3600,
}
CPU_ONLY = {
    "ray_version": "2.60.0",
    "image": "rayproject/ray:2.60.0-py311",
    "head": {"cpu": "2", "memory": "4Gi"},
    "worker_groups": [{"group_name": "cpu", "replicas": 2, "cpu": "4", "memory": "8Gi"}],
}
GPU = {
    **CPU_ONLY,
    "worker_groups": [
        {"group_name": "cpu", "replicas": 2, "cpu": "4", "memory": "8Gi"},
        {
            "group_name": "gpu",
            "replicas": 1,
            "gpu": 1,
            "cpu": "8",
            "memory": "32Gi",
            "node_selector": {"accelerator": "l4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    ],
}
AUTOSCALING = {
    **CPU_ONLY,
    "autoscaling": True,
    "service_account": "ray-workloads",
    "worker_groups": [
        {"group_name": "cpu", "replicas": 1, "min_replicas": 0, "max_replicas": 10, "cpu": "4", "memory": "8Gi"}
    ],
}


def _labels(ephemeral: bool) -> dict[str, str]:
    return cluster_labels(
        owner="data-science",
        team="forecasting",
        idle_timeout_seconds=1800,
        max_lifetime_seconds=86400,
        identity=IDENTITY,
        ephemeral=ephemeral,
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )


ANNOTATIONS = {"airflow-ray-platform.io/run-id": IDENTITY.run_id}


def _cases() -> dict[str, dict]:
    cases = {}
    for name, cluster in [
        ("raycluster-cpu-only", CPU_ONLY),
        ("raycluster-gpu-group", GPU),
        ("raycluster-autoscaling", AUTOSCALING),
    ]:
        config = load_job_configuration({**BASE, "cluster": cluster})
        cases[name] = render_ray_cluster("zones", "ml", config.cluster, _labels(False), ANNOTATIONS)
    config = load_job_configuration({**BASE, "cluster": CPU_ONLY, "job": JOB})
    metadata = {"airflow_task_key": IDENTITY.key}
    cases["rayjob-ephemeral"] = render_ray_job(
        IDENTITY.submission_id(), "ml", config.job, metadata, _labels(True), ANNOTATIONS, cluster_spec=config.cluster
    )
    cases["rayjob-on-named-cluster"] = render_ray_job(
        IDENTITY.submission_id(), "ml", config.job, metadata, _labels(False), ANNOTATIONS, cluster_name="zones"
    )
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_manifest_and_strict_crd_validation(name):
    manifest = CASES[name]
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert manifest == yaml.safe_load(path.read_text())
    validate_manifest(manifest)
    if SHARED_CRDS.exists():
        validate_manifest(manifest, crd_dir=SHARED_CRDS)


def test_vendored_crds_are_the_shared_ones_unchanged():
    if not SHARED_CRDS.exists():
        pytest.skip("../shared/kuberay/v1.7.0 is not beside this checkout")
    for file in [*CRD_FILES.values(), "LICENSE"]:
        assert (CRDS / file).read_bytes() == (SHARED_CRDS / file).read_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["spec"]["headGroupSpec"].update(rayStartParam={}), "'rayStartParam' was unexpected"),
        (lambda m: m["spec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
        (lambda m: m["spec"].update(enableInTreeAutoscaling="yes"), "'yes' is not of type 'boolean'"),
        (lambda m: m["spec"]["authOptions"].update(mode="tokens"), "'tokens' is not one of"),
    ],
)
def test_a_misspelt_or_wrong_field_is_rejected_by_path(mutate, message):
    manifest = copy.deepcopy(CASES["raycluster-cpu-only"])
    mutate(manifest)
    with pytest.raises(ManifestValidationError, match=message):
        validate_manifest(manifest)


def test_token_auth_is_on_by_default_and_needs_ray_2_52():
    assert CASES["raycluster-gpu-group"]["spec"]["authOptions"] == {"mode": "token"}
    with pytest.raises(JobConfigurationError, match=r"cluster: ray_version 2.46.0 has no token authentication"):
        load_job_configuration({**BASE, "cluster": {**CPU_ONLY, "ray_version": "2.46.0"}})
    old = load_job_configuration({**BASE, "cluster": {**CPU_ONLY, "ray_version": "2.46.0", "auth": "disabled"}})
    manifest = render_ray_cluster("old", "ml", old.cluster, {}, {})
    assert manifest["spec"]["authOptions"] == {"mode": "disabled"}
    validate_manifest(manifest)


def test_ephemeral_job_owns_its_cluster_and_airflow_owns_retries():
    spec = CASES["rayjob-ephemeral"]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 3600 and "clusterSelector" not in spec
    named = CASES["rayjob-on-named-cluster"]["spec"]
    assert named["clusterSelector"] == {"ray.io/cluster": "zones"} and "rayClusterSpec" not in named
    gpu = CASES["raycluster-gpu-group"]["spec"]["workerGroupSpecs"][1]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        "nvidia.com/gpu"
        not in CASES["raycluster-gpu-group"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"]
    )
