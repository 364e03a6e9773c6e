"""Provider registration: the entry point, Airflow's provider schema, and importable class paths."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

import airflow_ray_platform
from airflow_ray_platform.operators.ray import RayClusterOperator, RayJobOperator
from airflow_ray_platform.spec.models import JobConfigurationError


def test_entry_point_returns_provider_info_that_airflow_accepts():
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_ray_platform")]
    info = entry.load()()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    assert info["connection-types"][0]["connection-type"] == "ray"


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_listed_class_and_module_imports():
    info = airflow_ray_platform.get_provider_info()
    for key in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[key]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for path in [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]:
        _import(path)


def test_operators_default_deferrable_from_airflow_config():
    from airflow.configuration import conf

    expected = conf.getboolean("operators", "default_deferrable", fallback=False)
    config = {"name": "x", "owner": "o", "team": "t", "job": {"entrypoint": "true"}}
    assert RayJobOperator(task_id="t", job_configuration=config).deferrable is expected


@pytest.mark.parametrize("operator", [RayJobOperator, RayClusterOperator])
def test_bad_configuration_fails_at_parse_and_creates_nothing(operator, backend):
    before = backend.registry.names()
    with pytest.raises(JobConfigurationError, match=r"cluster\.head\.memory: must be at least 256Mi"):
        operator(
            task_id="t",
            job_configuration={
                "name": "x",
                "owner": "o",
                "team": "t",
                "cluster": {"head": {"memory": "1Mi"}},
            },
        )
    assert backend.registry.names() == before


def test_parse_time_kuberay_manifest_validation(monkeypatch):
    """``[ray_platform] validate_kuberay_manifests``: parsing renders and strictly validates manifests.

    The model now enforces the CRDs' own quantity pattern (below), so no configuration it accepts
    fails the CRD today; the option stays as a guard against the two drifting apart, and every shipped
    configuration passes it.
    """
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from airflow_ray_platform.operators.ray import RayClusterOperator
    from airflow_ray_platform.spec.models import JobConfigurationError

    monkeypatch.setenv("AIRFLOW__RAY_PLATFORM__VALIDATE_KUBERAY_MANIFESTS", "True")
    config = {"name": "a", "owner": "o", "team": "t", "cluster": {"head": {"cpu": "1_000"}}}
    with pytest.raises(JobConfigurationError, match=r"cluster\.head\.cpu: must be a Kubernetes quantity"):
        RayClusterOperator(task_id="on", job_configuration=config)
    bag = DagBag(dag_folder=str(Path(__file__).parents[1] / "dags"))
    assert bag.import_errors == {}  # every shipped configuration renders manifests that pass


def test_the_models_quantity_rule_is_the_crds_own():
    """The quantity text the model accepts is exactly what KubeRay's vendored CRDs accept."""
    from airflow_ray_platform.backends.kuberay.schema import CRD_FILES, CRDS
    from airflow_ray_platform.spec.quantities import QUANTITY_TEXT

    text = (CRDS / CRD_FILES["RayCluster"]).read_text()
    patterns = {line.split("pattern: ", 1)[1] for line in text.splitlines() if "pattern: ^(\\+|-)?" in line}
    assert patterns == {QUANTITY_TEXT.pattern}


def test_a_sub_second_timeout_renders_a_deadline_of_one_second():
    """KubeRay refuses ``activeDeadlineSeconds: 0``."""
    from airflow_ray_platform.backends.kuberay.manifests import render_ray_job
    from airflow_ray_platform.spec.models import JobSpec

    manifest = render_ray_job("j", "default", JobSpec(entrypoint="x", timeout=0.5), {}, {}, {}, cluster_name="c")
    assert manifest["spec"]["activeDeadlineSeconds"] == 1


def test_importing_the_operators_sensor_and_triggers_does_not_import_kubernetes():
    """The triggerer imports a trigger class on its event loop, and every DAG parse imports the
    operators: neither may pay for the Kubernetes client (seconds) nor for Ray."""
    import subprocess
    import sys

    code = (
        "import sys, airflow_ray_platform.operators.ray, airflow_ray_platform.sensors.ray, "
        "airflow_ray_platform.triggers.ray; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kubernetes_asyncio', 'ray'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
