"""The provider's metrics: declared once, documented as declared, and received by a real StatsD server
from a real ``dag.test()`` run on the local backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.prices import DEFAULT_PRICES
from airflow_ray_platform.spec.naming import TaskIdentity

from ..conftest import TEST_DAGS
from ..helpers import dag_test_in_subprocess, recorded_job
from ..otlp_receiver import OtlpReceiver
from ..statsd_receiver import StatsdReceiver, parse_line

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "airflow_ray_platform"
OPERATIONS = ROOT / "docs" / "operations.md"
#: The StatsD type each kind of metric is sent as.
WIRE_TYPE = {metrics.Kind.COUNTER: "c", metrics.Kind.TIMER: "ms", metrics.Kind.GAUGE: "g"}


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """The table of ``docs/operations.md``: name -> (type, tags, meaning)."""
    rows = {}
    for line in OPERATIONS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`ray_platform."):
            tags = tuple(re.findall(r"`([a-z_]+)`", cells[2]))
            rows[cells[0].strip("`")] = (cells[1], tags, cells[3])
    return rows


def test_every_metric_is_documented_as_declared():
    declared = {m.full_name: (str(m.kind), m.tags, m.meaning) for m in metrics.CATALOGUE}
    assert documented_metrics() == declared


def test_every_declared_metric_is_sent_somewhere_and_nothing_undeclared_is():
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "metrics.py")
    sent = set(re.findall(r"\bmetrics\.([A-Z_]+)\(", source))
    declared = {name for name, value in vars(metrics).items() if isinstance(value, metrics.Metric)}
    assert sent == declared
    assert len({m.full_name for m in metrics.CATALOGUE}) == len(metrics.CATALOGUE)


def test_every_call_in_the_package_passes_exactly_the_declared_tags():
    """A metric called with other tags raises (a bug, not a passing fault): read every call site, tested
    or not, so that no path a test does not reach can fail a task over a metric."""
    import ast

    declared = {name: value for name, value in vars(metrics).items() if isinstance(value, metrics.Metric)}
    calls = 0
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            function = node.func if isinstance(node, ast.Call) else None
            if not (isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name)):
                continue
            if function.value.id != "metrics" or function.attr not in declared:
                continue
            calls += 1
            passed = set()
            for keyword in node.keywords:
                if keyword.arg is None:  # **tags: the mapping's keys, where it is written out here
                    assert isinstance(keyword.value, ast.Name), (path, node.lineno)
                    passed |= _mapping_keys(path, keyword.value.id)
                else:
                    passed.add(keyword.arg)
            assert passed == set(declared[function.attr].tags), (path.name, node.lineno, function.attr)
    assert calls >= len(declared)


def _mapping_keys(path: Path, name: str) -> set[str]:
    """The keys of the dict literal assigned to ``name`` in ``path`` (``tags = {"backend": ..., ...}``)."""
    import ast

    keys: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            assert isinstance(node.value, ast.Dict), (path, node.lineno)
            keys |= {key.value for key in node.value.keys if isinstance(key, ast.Constant)}
    assert keys, (path, name)
    return keys


def test_tags_are_exactly_the_declared_ones_and_values_are_safe_for_every_receiver():
    with pytest.raises(ValueError, match=r"takes the tags \['backend', 'team'\], not \['backend'\]"):
        metrics.JOB_SUBMITTED(backend="local")
    with pytest.raises(ValueError, match="not"):
        metrics.JOB_SUBMITTED(backend="local", team="a", run_id="r")  # an id never becomes a tag
    assert metrics._tag_value("a,b=c d") == "a_b_c_d" and metrics._tag_value(None) == metrics.NONE


def test_the_receiver_decodes_airflows_influxdb_tagged_lines():
    sample = parse_line("airflow.ray_platform.job.finished,backend=local,team=a,outcome=failed:1|c")
    assert (sample.name, sample.value, sample.kind) == ("airflow.ray_platform.job.finished", 1.0, "c")
    assert sample.tags == {"backend": "local", "team": "a", "outcome": "failed"}


def test_a_dag_test_run_sends_the_lifecycle_to_a_real_statsd_receiver(
    airflow_db, local_backend, shared_cluster, tmp_path
):
    """A worker's ``dag.test()`` of a job on a cluster of its own, with Airflow configured for StatsD as a
    deployment would be: the provider's metrics arrive under ``ray_platform.``, tagged, once each."""
    receiver = StatsdReceiver()
    logical_date = datetime(2026, 3, 4, tzinfo=UTC)
    log_path = tmp_path / "worker.log"
    entrypoint = "python -c \"import time; time.sleep(2); print('trained')\""
    try:
        worker = dag_test_in_subprocess(
            "ray_job_ephemeral", logical_date, entrypoint, log_path, environment=receiver.airflow_environment
        )
        assert worker.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        receiver.wait_for(lambda: receiver.provider_samples("cluster.deleted"), timeout=10)
    finally:
        receiver.close()
    by_name: dict[str, list] = {}
    for sample in receiver.provider_samples():
        by_name.setdefault(sample.name.removeprefix("airflow.ray_platform."), []).append(sample)
    for name, samples in by_name.items():  # each with its declared type and tags
        metric = next(m for m in metrics.CATALOGUE if m.name == name)
        assert {(s.kind, tuple(sorted(s.tags))) for s in samples} == {
            (WIRE_TYPE[metric.kind], tuple(sorted(metric.tags)))
        }
    team = {"backend": "local", "team": "platform"}
    assert [s.tags for s in by_name["cluster.created"]] == [team]
    assert [s.tags for s in by_name["cluster.deleted"]] == [{**team, "cause": "job_ended"}]
    (ready,) = by_name["cluster.ready"]
    assert ready.tags == team and 0 < ready.value < 300_000  # milliseconds
    assert [s.tags for s in by_name["job.submitted"]] == [team]
    assert [s.tags for s in by_name["job.finished"]] == [{**team, "outcome": "succeeded"}]
    (duration,) = by_name["job.duration"]
    assert duration.value >= 2000  # the job slept two seconds
    assert [s.tags["waiter"] for s in by_name["job.detection_lag"]] in (["task"], ["trigger"])
    # The cost counted is the record's: requested resources over the run time, at the default prices.
    run_id = f"manual__{logical_date.isoformat()}"
    submission_id = TaskIdentity("ray_job_ephemeral", "job", run_id).submission_id(attempt=1)
    job = recorded_job(submission_id)
    hours = duration.value / 1000 / 3600
    expected = job["requested_cpu"] * hours * DEFAULT_PRICES["cpu_hour"] + (
        job["requested_memory_bytes"] / 1024**3 * hours * DEFAULT_PRICES["memory_gib_hour"]
    )
    (cost,) = by_name["usage.cost"]
    assert cost.tags == team and cost.value == pytest.approx(expected, rel=1e-3)
    assert "job.reattached" not in by_name and "cluster.failed" not in by_name


def test_a_dag_test_run_exports_them_over_otlp_when_airflow_uses_opentelemetry(airflow_db, shared_cluster):
    """``[metrics] otel_on``: the same metrics reach an OTLP receiver, tags as attributes. (Airflow's
    exporter sends every interval and not at exit, so the run's process waits three intervals.)"""
    receiver = OtlpReceiver()
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import ray_e2e_dags as d; "
        "d.ray_job_blocking.test(run_conf={'entrypoint': 'python -c \"print(1)\"'}); time.sleep(1.5)"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(TEST_DAGS)],
            env={**os.environ, **receiver.airflow_environment},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        receiver.close()
    team = {"backend": "local", "team": "platform"}
    assert team in [point.attributes for point in receiver.provider_points("job.submitted")]
    finished = receiver.provider_points("job.finished")
    assert {**team, "outcome": "succeeded"} in [point.attributes for point in finished]
    assert {point.kind for point in finished} == {"sum"}
    assert {point.kind for point in receiver.provider_points("job.duration")} <= {"histogram", "exponential_histogram"}
    assert receiver.provider_points("job.duration")


def test_a_sweep_sends_what_the_stuck_starting_and_budget_alerts_read(local_backend, shared_cluster, tmp_path):
    """A (dry-run) sweep of the session's real local backend under a policy with a budget: its decisions,
    the clusters by state, the oldest still starting, and the team's budget reach a StatsD receiver."""
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

    from airflow_ray_platform.maintenance.garbage_collection import sweep
    from airflow_ray_platform.maintenance.leases import every_lease_live

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "teams:\n  platform:\n    match: {dag_ids: ['*']}\n    daily_cost_budget: 12.5\n"
        "  forecasting:\n    match: {tags: [forecasting]}\n"
    )
    receiver = StatsdReceiver()
    saved = {key: os.environ.get(key) for key in [*receiver.airflow_environment, "AIRFLOW__RAY_PLATFORM__POLICY"]}
    os.environ.update({**receiver.airflow_environment, "AIRFLOW__RAY_PLATFORM__POLICY": str(policy)})
    try:
        stats.initialize(factory=get_stats_factory(), export_legacy_names=False)
        done = sweep(
            local_backend, None, task_state=lambda identity: None, lease_is_live=every_lease_live, dry_run=True
        )
        receiver.wait_for(lambda: receiver.provider_samples("team.daily_budget"), timeout=10)
    finally:
        stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        receiver.close()
    local = {"backend": "local"}
    assert [s.tags for s in receiver.provider_samples("sweep.completed")] == [local]
    decisions = {s.tags["decision"]: s.value for s in receiver.provider_samples("sweep.decisions")}
    assert sum(decisions.values()) == len(done.outcomes) and "deleted" not in decisions  # a dry run
    by_state = {s.tags["state"]: s.value for s in receiver.provider_samples("clusters")}
    assert set(by_state) == {"PROVISIONING", "READY", "FAILED"} and by_state["READY"] >= 1
    (longest,) = receiver.provider_samples("clusters.starting_longest_seconds")
    assert longest.kind == "g" and longest.value >= 0
    assert [(s.tags, s.value) for s in receiver.provider_samples("team.daily_budget")] == [({"team": "platform"}, 12.5)]


# ------------------------------------------------------------------ what ships in deploy/monitoring
MONITORING = ROOT / "deploy" / "monitoring"
#: What statsd_exporter serves a metric of each kind as (the mapping's naming rule).
PROMETHEUS_SUFFIX = {metrics.Kind.COUNTER: "_total", metrics.Kind.TIMER: "_seconds", metrics.Kind.GAUGE: ""}
SERIES_NAME = re.compile(r"\bray_platform_[a-z_]+")


def prometheus_series() -> dict[str, metrics.Metric]:
    """Every series the exporter serves for the provider's metrics (a histogram's _bucket, _sum and _count)."""
    series = {}
    for metric in metrics.CATALOGUE:
        name = metric.full_name.replace(".", "_") + PROMETHEUS_SUFFIX[metric.kind]
        endings = ("_bucket", "_sum", "_count") if metric.kind == metrics.Kind.TIMER else ("",)
        series.update({name + ending: metric for ending in endings})
    return series


def test_the_exporter_mapping_maps_every_metric_and_nothing_else():
    import yaml

    mapping = yaml.safe_load((MONITORING / "statsd-exporter-mapping.yaml").read_text())
    kinds = {metrics.Kind.COUNTER: "counter", metrics.Kind.TIMER: "observer", metrics.Kind.GAUGE: "gauge"}
    expected = [
        {
            "match": f"airflow.{m.full_name}",
            "match_metric_type": kinds[m.kind],
            "name": m.full_name.replace(".", "_") + PROMETHEUS_SUFFIX[m.kind],
        }
        for m in metrics.CATALOGUE
    ]
    assert mapping["mappings"] == expected
    assert mapping["defaults"]["observer_type"] == "histogram"


def _expressions_of_alerts() -> dict[str, str]:
    import yaml

    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yaml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def _expressions_of_dashboard() -> dict[str, str]:
    import json

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["query"]["query"]
    return found


@pytest.mark.parametrize("expressions", [_expressions_of_alerts, _expressions_of_dashboard])
def test_alerts_and_dashboard_name_only_series_the_provider_sends(expressions):
    served = prometheus_series()
    named = {where: set(SERIES_NAME.findall(expr)) for where, expr in expressions().items()}
    unknown = {where: sorted(names - set(served)) for where, names in named.items() if names - set(served)}
    assert not unknown
    assert all(named.values())  # every expression reads at least one of them
    # A label an expression filters or groups by is one the metric carries (``le`` is the histogram's).
    for where, expr in expressions().items():
        carried = set().union(*(served[name].tags for name in named[where])) | {"le"}
        used = set(re.findall(r"\b(?:by|on) \(([^)]*)\)", expr)) | set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        labels = {label.strip() for group in used for label in group.split(",")} - {""}
        assert labels <= carried, (where, labels - carried)


def test_the_alerts_cover_what_an_operator_is_paged_for():
    alerts = _expressions_of_alerts()
    reads = {name: set(SERIES_NAME.findall(expr)) for name, expr in alerts.items()}
    for series in (
        "ray_platform_clusters_starting_longest_seconds",  # stuck starting
        "ray_platform_sweep_failed_total",  # a failing sweep
        "ray_platform_job_queue_wait_seconds_bucket",  # rising queue wait
        "ray_platform_job_detection_lag_seconds_bucket",  # detection lag over its interval
        "ray_platform_authorization_refused_total",  # refusal spikes
        "ray_platform_team_daily_budget",  # cost over a team's budget
    ):
        assert any(series in names for names in reads.values()), series
