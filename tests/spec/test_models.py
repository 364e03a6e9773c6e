"""job_configuration: valid input accepted in every form, bad input named field by field."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ray_platform.spec.models import (
    JobConfiguration,
    JobConfigurationError,
    load_job_configuration,
    validate_cluster_name,
)

VALID = {
    "name": "zone-training",
    "owner": "data-science",
    "team": "forecasting",
    "cluster": {
        "ray_version": "2.60.0",
        "head": {"cpu": "2", "memory": "4Gi"},
        "worker_groups": [
            {"group_name": "cpu", "replicas": 2, "min_replicas": 1, "max_replicas": 4, "cpu": "500m"},
            {
                "group_name": "gpu",
                "replicas": 0,
                "max_replicas": 2,
                "gpu": 1,
                "memory": "16Gi",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        ],
        "autoscaling": True,
        "idle_timeout": 600,
    },
    "job": {
        "entrypoint": "python train.py",
        "runtime_env": {"pip": ["numpy"], "env_vars": {"A": "1"}, "working_dir": "."},
        "entrypoint_num_cpus": 1,
        "timeout": "PT1H",
    },
    "lifecycle": {"cleanup": "on_success"},
}


def test_valid_configuration_keeps_ray_and_kuberay_names():
    config = load_job_configuration(VALID)
    assert config.cluster.worker_groups[1].gpu == 1
    assert config.cluster.idle_timeout == timedelta(minutes=10)
    assert config.job.timeout == timedelta(hours=1)
    assert config.job.runtime_env.to_ray() == {"pip": ["numpy"], "env_vars": {"A": "1"}, "working_dir": "."}
    assert config.cluster_name == "zone-training"
    assert not config.cluster.reuses_existing


def test_accepts_model_yaml_and_json_files(tmp_path):
    import yaml

    model = JobConfiguration.model_validate(VALID)
    assert load_job_configuration(model) is model
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(VALID))))
    (tmp_path / "c.json").write_text(json.dumps(VALID))
    assert load_job_configuration(tmp_path / "c.yaml") == model
    assert load_job_configuration(str(tmp_path / "c.json")) == model


def test_name_only_cluster_is_a_reference():
    config = load_job_configuration({**VALID, "cluster": {"name": "shared-gpu"}})
    assert config.cluster.reuses_existing
    assert config.cluster_name == "shared-gpu"


@pytest.mark.parametrize(
    ("patch", "field", "rule"),
    [
        ({"name": "Zone_Training"}, "name", "DNS-1123"),
        ({"name": "x" * 41}, "name", "at most 40"),
        ({"owner": "has space"}, "owner", "label value"),
        ({"cluster": {"head": {"cpu": "lots"}}}, "cluster.head.cpu", "quantity"),
        ({"cluster": {"head": {"memory": "100Mi"}}}, "cluster.head.memory", "at least 256Mi"),
        (
            {"cluster": {"worker_groups": [{"group_name": "w", "replicas": 5, "max_replicas": 2}]}},
            "cluster.worker_groups[0]",
            "replicas must lie between",
        ),
        (
            {"cluster": {"worker_groups": [{"group_name": "w"}, {"group_name": "w"}]}},
            "cluster",
            "must be unique",
        ),
        ({"cluster": {"idle_timeout": -5}}, "cluster.idle_timeout", "at least 60 seconds"),
        ({"cluster": {"ray_version": "latest"}}, "cluster.ray_version", "pattern"),
        ({"job": {"entrypoint": "  "}}, "job.entrypoint", "blank"),
        (
            {"job": {"entrypoint": "x", "runtime_env": {"env_var": {}}}},
            "job.runtime_env",
            "unknown runtime_env",
        ),
        ({"job": {"entrypoint": "x", "entrypoint_num_cpus": -1}}, "job.entrypoint_num_cpus", "greater than"),
        ({"clutser": {}}, "clutser", "not a known field"),
        # What the tenancy review found accepted (and failing later, or meaning something else):
        ({"cluster": {"head": {"cpu": "1_000"}}}, "cluster.head.cpu", "quantity"),  # KubeRay's CRD refuses it
        ({"cluster": {"head": {"cpu": "2 "}}}, "cluster.head.cpu", "quantity"),
        ({"cluster": {"head": {"cpu": float("inf")}}}, "cluster.head.cpu", "finite"),  # was an OverflowError
        ({"cluster": {"head": {"memory": "nan"}}}, "cluster.head.memory", "quantity"),
        ({"cluster": {"image": ""}}, "cluster.image", "pattern"),
        ({"cluster": {"idle_timeout": 0.5}}, "cluster.idle_timeout", "at least 60 seconds"),  # meant never
        ({"cluster": {"labels": {"team name": "x"}}}, "cluster.labels", "qualified name"),
        ({"cluster": {"head": {"node_selector": {"-bad": "x"}}}}, "cluster.head.node_selector", "qualified name"),
        ({"cluster": {"head": {"node_selector": {"zone": "a b"}}}}, "cluster.head.node_selector.zone", "label value"),
        ({"lifecycle": {"startup_timeout": -1}}, "lifecycle.startup_timeout", "positive"),
        (
            {"job": {"entrypoint": "x", "entrypoint_resources": {"accelerator": float("nan")}}},
            "job.entrypoint_resources.accelerator",
            "finite number",
        ),
        ({"job": {"entrypoint": "x", "entrypoint_resources": {"a": -1}}}, "job.entrypoint_resources.a", "greater"),
        ({"job": {"entrypoint": "x", "entrypoint_num_gpus": float("inf")}}, "job.entrypoint_num_gpus", "finite"),
    ],
)
def test_errors_name_the_field_and_the_rule(patch, field, rule):
    with pytest.raises(JobConfigurationError) as raised:
        load_job_configuration({**VALID, **patch})
    message = str(raised.value)
    assert f"  {field}" in message
    assert rule in message


def test_odd_keys_are_quoted_so_each_error_stays_on_one_line():
    with pytest.raises(JobConfigurationError) as raised:
        load_job_configuration({**VALID, "cluster": {"\x1e": 0, "a b": 1}})
    lines = str(raised.value).splitlines()
    assert lines[1:] == [
        '  cluster["\\u001e"]: is not a known field (misspelt?)',
        '  cluster["a b"]: is not a known field (misspelt?)',
    ]


def test_an_unreadable_file_is_named_never_echoed(tmp_path):
    """A configuration path may name any readable file: its error says where, never what it holds."""
    secret = tmp_path / "credentials.yaml"
    secret.write_text("aws_secret_access_key: [AKIA-SECRET-VALUE\n")
    with pytest.raises(JobConfigurationError) as raised:
        load_job_configuration(secret)
    assert "is not valid YAML at line" in str(raised.value) and "AKIA-SECRET-VALUE" not in str(raised.value)
    as_json = tmp_path / "credentials.json"
    as_json.write_text('{"token": "AKIA-SECRET-VALUE"')
    with pytest.raises(JobConfigurationError) as raised:
        load_job_configuration(as_json)
    assert "is not valid JSON at line 1" in str(raised.value) and "AKIA" not in str(raised.value)


@pytest.mark.parametrize("name", ["/" + "../" * 8 + "tmp", "..", "a/b", "Shared", "", "x" * 64, 7])
def test_cluster_names_given_anywhere_are_dns_labels(name):
    with pytest.raises(JobConfigurationError, match=r"cluster_name: .* is not a cluster name"):
        validate_cluster_name(name)
    assert validate_cluster_name("zone-training-3f2a9c1b") == "zone-training-3f2a9c1b"


def test_missing_file_and_wrong_type():
    with pytest.raises(JobConfigurationError, match="does not exist"):
        load_job_configuration("/nonexistent/job.yaml")
    with pytest.raises(JobConfigurationError, match="must be a mapping"):
        load_job_configuration(42)


# A property: any mutation of a valid configuration either validates or fails with
# JobConfigurationError whose every line names a field path that exists in the input.
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=50),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


_ALL_PATHS = [p for p in _paths(VALID) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_ALL_PATHS), junk=_junk, drop=st.booleans())
def test_mutations_fail_only_with_named_field_errors(path, junk, drop):
    mutated = copy.deepcopy(VALID)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = junk
    try:
        load_job_configuration(mutated)
    except JobConfigurationError as error:
        lines = str(error).splitlines()
        assert lines[0] == "invalid job_configuration:"
        assert len(lines) > 1
        for line in lines[1:]:
            location, _, rule = line.strip().partition(": ")
            assert rule, line
            head = location.split(".")[0].split("[")[0]
            assert head in {"name", "owner", "team", "cluster", "job", "lifecycle"}, line


# ------------------------------------------------------------------- quantities and resources
_QUANTITY_TEXT = st.text(alphabet="0123456789.eE+-_ nmuKkMGTPEi", max_size=7)


@settings(max_examples=3000, deadline=None)
@given(text=st.one_of(_QUANTITY_TEXT, st.sampled_from(["500m", "4Gi", "1ki", "1_000", "2 ", "1e3Mi", "Ki", ""])))
def test_quantities_parse_as_the_kubernetes_client_parses_them(text):
    """The project's parser (no Kubernetes import) and the Kubernetes client's agree on every input."""
    from kubernetes.utils.quantity import parse_quantity as kubernetes_parse

    from airflow_ray_platform.spec.quantities import parse_quantity

    try:
        expected = ("value", kubernetes_parse(text))
    except ValueError:
        expected = ("error", None)
    try:
        got = ("value", parse_quantity(text))
    except ValueError:
        got = ("error", None)
    if expected[0] == got[0] == "value" and expected[1].is_nan():
        assert got[1].is_nan()
    else:
        assert got == expected


def test_requested_resources_agree_wherever_they_are_read(shared_cluster, tmp_path, monkeypatch):
    """One rule for what a cluster requests: the configuration, the local backend's record, a RayCluster
    read back from Kubernetes, the job's row (cost export) and the GC report say the same."""
    from airflow_ray_platform.backends.base import ClusterState, JobInfo, JobState
    from airflow_ray_platform.backends.kuberay.manifests import render_ray_cluster
    from airflow_ray_platform.backends.kuberay.status import cluster_info
    from airflow_ray_platform.maintenance.garbage_collection import Decision, Outcome, Sweep, report
    from airflow_ray_platform.records.lifecycle import DeleteCause, LifecycleRecorder
    from airflow_ray_platform.records.state_store import StateStore, cluster_uid

    from ..conftest import SHARED_SPEC

    config = load_job_configuration(VALID)
    assert config.requested_resources == {"CPU": 3.0, "GPU": 0.0, "memory": 8 * 1024**3}  # head 2 + 2 workers of 0.5
    manifest = render_ray_cluster("c", "default", config.cluster, {}, {})
    assert cluster_info(manifest, "kuberay", None).resources == config.requested_resources
    assert dict(shared_cluster.resources) == SHARED_SPEC.requested_resources  # the local record

    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_ARP_RESOURCES", json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": url}})
    )
    info = cluster_info(manifest, "kuberay", None)
    LifecycleRecorder("arp_resources").job_seen(info, JobInfo("s", "c", JobState.SUCCEEDED), config=config)
    row = StateStore(url).job(cluster_uid("kuberay", "c", datetime.fromtimestamp(0, UTC)), "s")
    assert (row["requested_cpu"], row["requested_gpu"], row["requested_memory_bytes"]) == (3.0, 0.0, 8 * 1024**3)

    deleted = Outcome(Decision(info, True, "idle", cause=DeleteCause.GC_IDLE), "deleted", "idle")
    assert info.state == ClusterState.PROVISIONING
    assert "freed 3 CPU, 8.0 GiB memory, 0 GPU" in report(Sweep([], [deleted], dry_run=False))


def test_the_documented_reference_is_the_models_own():
    """docs/job-configuration.md's reference table is generated from the fields' descriptions."""
    from pathlib import Path

    from airflow_ray_platform.spec.reference import reference_markdown, reference_rows

    assert all(description for _, _, description in reference_rows()), "a field lacks its description"
    documented = (Path(__file__).parents[2] / "docs" / "job-configuration.md").read_text()
    assert reference_markdown() in documented, "regenerate it: python -m airflow_ray_platform.spec.reference"


def test_args_are_quoted_into_the_command_ray_runs():
    job = load_job_configuration(
        {**VALID, "job": {"entrypoint": "python t.py", "args": ["--out", "/o; id #", "a b"]}}
    ).job
    assert job.command == "python t.py --out '/o; id #' 'a b'"
    assert job.submission({})["entrypoint"] == job.command


def test_the_deprecated_cleanup_booleans_still_work_and_warn():
    """``shutdown_after_job`` / ``keep_cluster_on_failure`` map onto ``cleanup``, with a warning naming it."""
    import warnings

    from airflow_ray_platform.spec.models import ClusterCleanup, JobConfigurationDeprecationWarning

    base = {"name": "old", "owner": "o", "team": "t", "cluster": {"head": {"cpu": "1"}}}
    cases = [
        ({"shutdown_after_job": True}, ClusterCleanup.ALWAYS),
        ({"keep_cluster_on_failure": True}, ClusterCleanup.ON_SUCCESS),
        ({"shutdown_after_job": False}, ClusterCleanup.NEVER),
        ({"shutdown_after_job": False, "keep_cluster_on_failure": True}, ClusterCleanup.NEVER),
    ]
    for old, cleanup in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = load_job_configuration({**base, "lifecycle": old})
        assert config.lifecycle.cleanup == cleanup, old
        assert [w.category for w in caught] == [JobConfigurationDeprecationWarning], old
        assert f"write cleanup: {cleanup.value}" in str(caught[0].message)
    assert not load_job_configuration({**base, "lifecycle": {"cleanup": "on_success"}}).lifecycle.deletes_cluster(
        succeeded=False
    )
    with pytest.raises(JobConfigurationError, match="cleanup: give it alone"):
        load_job_configuration({**base, "lifecycle": {"cleanup": "never", "shutdown_after_job": False}})
    with pytest.raises(JobConfigurationError, match="shutdown_after_job: must be true or false"):
        load_job_configuration({**base, "lifecycle": {"shutdown_after_job": "sometimes"}})


#: A credential pasted where a key goes (AWS's documented example secret).
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "config",
    [
        {"job": {"entrypoint": "x", SECRET: "1"}},
        {"job": {"entrypoint": "x", "runtime_env": {SECRET: "1"}}},
        {"cluster": {"head": {"ray_start_params": {SECRET: "1"}}}},
        {"cluster": {"head": {"ray_start_params": {"temp-dir=" + SECRET: "1"}}}},
    ],
    ids=["unknown field", "unknown runtime_env field", "malformed ray_start_params key", "reserved flag"],
)
def test_an_unknown_key_is_named_by_a_short_prefix_only(config):
    """Found by review: a secret pasted where a key goes came back whole in the error (a task log)."""
    with pytest.raises(JobConfigurationError) as refused:
        load_job_configuration({"name": "x", "owner": "o", "team": "t", **config})
    assert SECRET[:8] in str(refused.value) and SECRET[20:] not in str(refused.value)
