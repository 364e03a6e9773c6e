"""Provider registration: the entry point, Airflow's provider schema, and importable class paths."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
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
    assert [decorator["name"] for decorator in info["task-decorators"]] == ["ray"]
    assert callable(_import(info["task-decorators"][0]["class-name"]))


@pytest.mark.parametrize("configured", ["True", "False"])
def test_operators_default_deferrable_from_airflow_config(configured):
    """``[operators] default_deferrable`` set each way, in a fresh interpreter (the default is read when
    the operator module is imported, as Airflow's own operators read it)."""
    code = (
        "from airflow_ray_platform.operators.ray import RayJobOperator\n"
        "from airflow_ray_platform.sensors.ray import RayJobSensor\n"
        "config = {'name': 'x', 'owner': 'o', 'team': 't', 'job': {'entrypoint': 'true'}}\n"
        "print(RayJobOperator(task_id='t', job_configuration=config).deferrable,"
        " RayJobSensor(task_id='s', cluster_name='c', submission_id='j').deferrable)"
    )
    env = {**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": configured}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [configured, configured]


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
    """``[ray_platform] validate_kuberay_manifests``: parsing renders the operator's KubeRay manifests and
    validates them against the CRDs (counted on the CRD validators), and only with the option set.

    The model enforces the CRDs' own quantity pattern (below), so no configuration it accepts fails the
    CRD today; the option stays as a guard against the two drifting apart, and every shipped
    configuration passes it.
    """
    from airflow.dag_processing.dagbag import DagBag

    from airflow_ray_platform.backends.kuberay.schema import _validator

    config = {"name": "a", "owner": "o", "team": "t", "cluster": {"head": {"cpu": "1"}}, "job": {"entrypoint": "x"}}

    def validations() -> int:
        info = _validator.cache_info()
        return info.hits + info.misses

    before = validations()
    RayJobOperator(task_id="off", job_configuration=config)
    assert validations() == before  # the option unset: no manifest is rendered at parse
    monkeypatch.setenv("AIRFLOW__RAY_PLATFORM__VALIDATE_KUBERAY_MANIFESTS", "True")
    RayJobOperator(task_id="on", job_configuration=config)
    assert validations() == before + 2  # the RayCluster and the RayJob, each against its CRD
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
    operators and ``@task.ray``: none may pay for the Kubernetes client (seconds) nor for Ray."""
    import subprocess
    import sys

    code = (
        "import sys, airflow_ray_platform.operators.ray, airflow_ray_platform.sensors.ray, "
        "airflow_ray_platform.triggers.ray, airflow_ray_platform.decorators.ray; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kubernetes_asyncio', 'ray'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_every_setting_is_declared_and_read_in_one_place():
    """``airflow config list`` shows every ``[ray_platform]`` option, and only ``settings`` reads Airflow's
    configuration (one home for each option's name and default)."""
    import re

    from airflow_ray_platform import settings

    declared = airflow_ray_platform.get_provider_info()["config"]["ray_platform"]["options"]
    assert set(declared) == {
        "state_store_conn_id",
        "log_storage_uri",
        "policy",
        "validate_kuberay_manifests",
        "cleanup_ray_conn_ids",
        "deferral_settle_seconds",
    }
    assert all(option["description"] and option["type"] for option in declared.values())
    readers = {
        str(path.relative_to(Path(settings.__file__).parent))
        for path in Path(settings.__file__).parent.rglob("*.py")
        if re.search(r"conf(\(\))?\.get(boolean|float|int)?\(", path.read_text())
    }
    assert readers == {"settings.py"}
