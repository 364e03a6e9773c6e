"""The platform policy: reading it, resolving a task's team, and what a team's configuration may ask for."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest

from airflow_ray_platform.spec.models import JobConfigurationError, load_job_configuration
from airflow_ray_platform.spec.naming import TaskIdentity
from airflow_ray_platform.tenancy.policy import Actor, DagFacts, Policy, PolicyError, PolicyViolation, load_policy

POLICY = {
    "defaults": {"max_cpus": "8", "max_memory": "32Gi", "max_gpus": 0, "max_worker_nodes": 4, "max_lifetime": "PT12H"},
    "teams": {
        "forecasting": {
            "match": {"bundles": ["forecasting-dags"]},
            "max_gpus": 2,
            "images": ["registry.corp/ray/"],
            "service_accounts": ["ray-forecasting"],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "pricing": {"match": {"dag_ids": ["pricing_*"], "tags": ["pricing"]}, "allow_keep": True},
        "research": {"match": {"owners": ["alice", "bob"]}, "allow_auth_disabled": True},
    },
}


def _config(team: str = "forecasting", **cluster):
    return load_job_configuration(
        {"name": "zones", "owner": "ds", "team": team, "cluster": cluster or {"head": {"cpu": "1"}}}
    )


def test_team_is_what_airflow_knows_of_the_dag_never_what_the_configuration_says():
    policy = Policy.model_validate(POLICY)
    assert policy.team_of(DagFacts("anything", bundle="forecasting-dags")) == "forecasting"
    assert policy.team_of(DagFacts("pricing_daily", tags=frozenset({"pricing", "prod"}))) == "pricing"
    assert policy.team_of(DagFacts("x", owners=frozenset({"bob"}))) == "research"
    with pytest.raises(PolicyViolation, match=r"DAG 'pricing_daily' .* to no team"):  # both criteria must hold
        policy.team_of(DagFacts("pricing_daily"))
    with pytest.raises(PolicyViolation, match=r"several teams \['forecasting', 'research'\]"):
        policy.team_of(DagFacts("x", bundle="forecasting-dags", owners=frozenset({"alice"})))


def test_a_configuration_claiming_another_team_is_refused_naming_the_field():
    policy = Policy.model_validate(POLICY)
    policy.check_configuration("forecasting", _config(image="registry.corp/ray/ray:2.60"))
    with pytest.raises(PolicyViolation, match=r"job_configuration.team: 'pricing', but .* team 'forecasting'"):
        policy.check_configuration("forecasting", _config(team="pricing", image="registry.corp/ray/ray:2.60"))


def test_ceilings_and_allow_lists_name_each_field_and_rule():
    policy = Policy.model_validate(POLICY)
    config = _config(
        head={"cpu": "6", "memory": "8Gi", "tolerations": [{"operator": "Exists"}]},
        worker_groups=[{"group_name": "w", "cpu": "4", "memory": "30Gi", "replicas": 1, "max_replicas": 5}],
        image="docker.io/evil/ray:latest",
        service_account="cluster-admin",
        auth="disabled",
        labels={"airflow-ray-platform.io/keep": "true"},
        max_lifetime="P2D",
    )
    with pytest.raises(PolicyViolation) as refused:
        policy.check_configuration("forecasting", config)
    text = str(refused.value)
    for expected in (
        "up to 26 CPU with every worker group at its max_replicas, over the policy's max_cpus 8",
        "up to 158Gi of memory with every worker group at its max_replicas, over the policy's max_memory 32Gi",
        "worker_groups: up to 5 worker nodes, over the policy's max_worker_nodes 4",
        "max_lifetime: 172800 s, over the policy's max_lifetime 43200 s",
        "image: 'docker.io/evil/ray:latest' is not among the policy's images",
        "service_account: 'cluster-admin' is not among",
        "head.tolerations[0]: {'operator': 'Exists'} is not among the policy's tolerations",
        "auth: disabled (an unauthenticated Jobs API) is not allowed",
        "labels: airflow-ray-platform.io/keep (exempt from garbage collection) is not allowed",
    ):
        assert expected in text, (expected, text)


def test_the_default_image_must_be_allowed_too_and_team_overrides_apply():
    policy = Policy.model_validate(POLICY)
    with pytest.raises(PolicyViolation, match="the default rayproject/ray"):
        policy.check_configuration("forecasting", _config())
    # pricing has no image list (any image), may keep; research may disable auth; both have the defaults' ceilings
    policy.check_configuration("pricing", _config(team="pricing", labels={"airflow-ray-platform.io/keep": "true"}))
    policy.check_configuration("research", _config(team="research", auth="disabled"))
    assert policy.allowances("forecasting").max_gpus == 2 and policy.allowances("pricing").max_gpus == 0
    assert policy.hard_lifetime("pricing") == timedelta(hours=12)


def test_reusing_a_named_cluster_checks_the_team_only():
    policy = Policy.model_validate(POLICY)
    config = load_job_configuration({"name": "zones", "owner": "ds", "team": "pricing", "cluster": {"name": "big"}})
    policy.check_configuration("pricing", config)


def test_a_digest_entry_allows_that_image_alone():
    policy = Policy.model_validate(
        {"teams": {"t": {"match": {"dag_ids": ["*"]}, "images": ["registry.corp/ray@sha256:" + "a" * 64]}}}
    )
    policy.check_configuration("t", _config(team="t", image="registry.corp/ray@sha256:" + "a" * 64))
    with pytest.raises(PolicyViolation, match="image"):
        policy.check_configuration("t", _config(team="t", image="registry.corp/ray@sha256:" + "b" * 64))


def test_policy_file_errors_name_the_field_never_the_content(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("teams:\n  t:\n    match: {}\n    max_cpus: lots\n    secret_field: hunter2\n")
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    text = str(error.value)
    assert "policy.teams.t.match: Value error, needs at least one" in text or "teams.t.match" in text
    assert "teams.t.max_cpus: must be a Kubernetes quantity" in text
    assert "teams.t.secret_field: is not a known field" in text
    assert "hunter2" not in text and "lots" not in text
    path.write_text("teams: [unclosed\n  password: hunter2")
    with pytest.raises(PolicyError, match=r"is not valid YAML at line \d") as error:
        load_policy(path)
    assert "hunter2" not in str(error.value)
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "missing.yaml")


def test_policy_is_read_again_when_the_file_changes(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("teams: {a: {match: {dag_ids: ['a_*']}}}\n")
    assert set(load_policy(path).teams) == {"a"}
    path.write_text("teams: {a: {match: {dag_ids: ['a_*']}}, b: {match: {dag_ids: ['b_*']}}}\n")
    os.utime(path, ns=(1, 2))  # a different modification time, as any write has
    assert set(load_policy(path).teams) == {"a", "b"}


def test_unowned_cluster_teams_must_be_teams_of_the_policy():
    with pytest.raises(ValueError, match=r"unowned_cluster_teams names teams .* \['ghost'\]"):
        Policy.model_validate({"teams": {"a": {"match": {"tags": ["a"]}}}, "unowned_cluster_teams": ["ghost"]})


def test_an_actor_survives_a_trigger_round_trip():
    actor = Actor("pricing", TaskIdentity("d", "t", "r", 3), 2, user="alice")
    assert Actor.from_dict(actor.to_dict()) == actor
    assert str(actor) == "team 'pricing' (task d/t/r/3, try 2) for user 'alice'"


@pytest.mark.parametrize(
    ("params", "rule"),
    [
        ({"dashboard-host": "0.0.0.0"}, "set by the backend"),
        ({"--temp-dir": "/tmp/x"}, "set by the backend"),
        ({"node_ip_address": "0.0.0.0"}, "set by the backend"),
        # found by review: spellings that passed the check, and that ``ray start`` reads all the same
        ({" dashboard-host": "0.0.0.0"}, "set by the backend"),
        ({"dashboard-host=0.0.0.0": ""}, "set by the backend"),
        ({"temp_dir ": "/tmp/x"}, "set by the backend"),
        ({"Temp-Dir": "/tmp/x"}, "set by the backend"),
        ({"num-cpus --temp-dir": "1"}, "are not `ray start` option names"),
    ],
)
def test_ray_start_params_cannot_override_the_backends_security_flags(params, rule):
    with pytest.raises(JobConfigurationError, match=rule):
        load_job_configuration(
            {"name": "x", "owner": "o", "team": "t", "cluster": {"head": {"ray_start_params": params}}}
        )


def test_replicas_are_bounded_before_anything_starts():
    with pytest.raises(JobConfigurationError, match="replicas: Input should be less than or equal to 2000"):
        load_job_configuration(
            {
                "name": "x",
                "owner": "o",
                "team": "t",
                "cluster": {"worker_groups": [{"group_name": "w", "replicas": 10**12, "max_replicas": 10**12}]},
            }
        )


def test_ceilings_count_what_the_autoscaler_may_grow_a_cluster_to():
    """Found by review: only ``replicas`` were counted, so an autoscaling group passed any ceiling."""
    policy = Policy.model_validate(
        {"defaults": {"max_cpus": "8", "max_gpus": 0}, "teams": {"t": {"match": {"tags": ["t"]}}}}
    )
    starts_small = _config(
        "t",
        head={"cpu": "1"},
        worker_groups=[
            {"group_name": "cpu", "cpu": "1", "replicas": 1, "max_replicas": 2000},
            {"group_name": "gpu", "cpu": "1", "gpu": 8, "replicas": 0, "max_replicas": 2000},
        ],
    )
    assert starts_small.cluster.requested_resources == {"CPU": 2.0, "GPU": 0.0, "memory": 4 * 2**30}
    with pytest.raises(PolicyViolation) as refused:
        policy.check_configuration("t", starts_small)
    assert "up to 4001 CPU with every worker group at its max_replicas, over the policy's max_cpus 8" in str(
        refused.value
    )
    assert "up to 16000 GPU with every worker group at its max_replicas, over the policy's max_gpus 0" in str(
        refused.value
    )


def _context(dag_id: str, bundle: str | None) -> dict:
    """What ``Actor.for_task`` reads of a task's context: its task instance (ids, try, bundle) and DAG."""
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id=dag_id, task_id="sweep", run_id="r", map_index=-1, try_number=1)
    ti.bundle_instance = SimpleNamespace(name=bundle) if bundle else None
    return {"ti": ti, "dag": SimpleNamespace(tags=[], tasks=[])}


def test_the_cleanup_identity_is_a_dag_of_the_platform_teams_bundle_not_a_dag_id(tmp_path):
    """Found by review: any DAG named ray_cleanup_idle_clusters could stop, delete and read every team's
    clusters. Under a policy the cleanup DAG must also come from a bundle the policy names."""
    policy = Policy.model_validate({**POLICY, "cleanup": {"bundles": ["platform-dags"]}})
    assert Actor.for_task(_context("ray_cleanup_idle_clusters", "platform-dags"), policy).cleanup
    with pytest.raises(PolicyViolation, match=r"comes from bundle 'forecasting-dags', which the platform policy's "):
        Actor.for_task(_context("ray_cleanup_idle_clusters", "forecasting-dags"), policy)
    nobody = Policy.model_validate(POLICY)  # no bundle named: no DAG acts as the cleanup DAG
    with pytest.raises(PolicyViolation, match="does not name: it does not act as the cleanup DAG"):
        Actor.for_task(_context("ray_cleanup_idle_clusters", "platform-dags"), nobody)
    assert Actor.for_task(_context("forecast", "forecasting-dags"), policy).team == "forecasting"
    legacy = tmp_path / "policy.yaml"
    legacy.write_text(json.dumps({**POLICY, "cleanup_dag_ids": ["ray_cleanup_idle_clusters"]}))
    with pytest.raises(PolicyError, match=r"cleanup_dag_ids: replaced by cleanup: \{bundles"):
        load_policy(legacy)


def test_airflow_ray_gc_acts_as_the_cleanup_dag_only_for_the_users_the_policy_names():
    from airflow_ray_platform.tenancy.policy import os_user

    policy = Policy.model_validate({**POLICY, "cleanup": {"os_users": ["someone-else"]}})
    with pytest.raises(PolicyViolation, match=rf"only cleanup.os_users act as the cleanup DAG; {os_user()} is not one"):
        Actor.cleanup_outside_airflow(policy)
    mine = Policy.model_validate({**POLICY, "cleanup": {"os_users": [os_user().removeprefix("os:")]}})
    assert Actor.cleanup_outside_airflow(mine).cleanup and Actor.cleanup_outside_airflow(None).cleanup


def test_the_policy_the_security_guide_shows_is_a_valid_policy(tmp_path):
    """docs/security.md's example, as a platform team would copy it."""
    import re
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    (example,) = re.findall(r"```yaml\n(defaults:.*?)```", guide, re.S)
    path = tmp_path / "policy.yaml"
    path.write_text(example)
    policy = load_policy(path)
    assert set(policy.teams) == {"forecasting", "pricing"}
    assert policy.allowances("pricing").daily_cost_budget == 50 and policy.allowances("forecasting").max_gpus == 4
