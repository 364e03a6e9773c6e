"""The authorization rule, pure: no action crosses a team boundary the policy does not allow."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState
from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEAM_LABEL
from airflow_ray_platform.tenancy.authorization import ADMITTED_ACTIONS, Action, authorize
from airflow_ray_platform.tenancy.policy import Actor, Policy

TEAMS = ["alpha", "beta", "gamma", "delta"]


def _cluster(
    owner: str | None, *, managed: bool = True, admits: tuple[str, ...] = (), sandboxed: bool | None = True
) -> ClusterInfo:
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE} if managed else {}
    if owner is not None:
        labels[TEAM_LABEL] = owner
    return ClusterInfo(
        name="c",
        backend="local",
        state=ClusterState.READY,
        dashboard_url=None,
        labels=labels,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        spec={"admit_teams": list(admits)},
        sandboxed=sandboxed,
    )


def _policy(teams: list[str], unowned: list[str]) -> Policy:
    return Policy.model_validate(
        {"teams": {team: {"match": {"dag_ids": [f"{team}_*"]}} for team in teams}, "unowned_cluster_teams": unowned}
    )


@st.composite
def situations(draw):
    teams = draw(st.lists(st.sampled_from(TEAMS), min_size=1, max_size=4, unique=True))
    unowned = draw(st.lists(st.sampled_from(teams), unique=True))
    policy = draw(st.sampled_from([None, _policy(teams, unowned)]))
    cleanup = draw(st.booleans())
    actor = Actor(None if cleanup else draw(st.sampled_from([*teams, None])), cleanup=cleanup)
    exists = draw(st.booleans())
    owner = draw(st.sampled_from([*teams, None]))
    admits = tuple(draw(st.lists(st.sampled_from(teams), unique=True)))
    cluster = _cluster(owner, managed=draw(st.booleans()), admits=admits) if exists else None
    action = draw(st.sampled_from(list(Action)))
    job_team = draw(st.sampled_from([*teams, None]))
    return policy, actor, action, cluster, job_team


@settings(max_examples=3000, deadline=None)
@given(situations())
def test_no_action_crosses_a_team_boundary_the_policy_does_not_allow(situation):
    policy, actor, action, cluster, job_team = situation
    verdict = authorize(policy, actor, action, "c", cluster, job_team)
    managed = cluster is not None and cluster.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
    if action == Action.DELETE and cluster is not None and not managed:
        assert not verdict.allowed  # never, policy or not: the provider does not delete what it did not create
    if policy is None:
        assert verdict.allowed or (action == Action.DELETE and not managed)
        return
    if not verdict.allowed:
        assert "'c'" in verdict.reason or "no team" in verdict.reason or "team" in verdict.reason
        return
    # What follows is allowed: it must be one of the policy's lines, and no other.
    if actor.cleanup:
        assert action not in (Action.CREATE, Action.SUBMIT, Action.RUN)
        return
    assert actor.team is not None
    if cluster is None:
        if action == Action.READ_LOGS:
            assert job_team == actor.team  # a persisted log: only the job's own team
        return
    owner = cluster.team
    if owner == actor.team:
        return
    assert action != Action.DELETE  # only the owner (or the cleanup DAG) deletes
    if owner is None:
        assert actor.team in policy.unowned_cluster_teams
        return
    assert actor.team in cluster.spec["admit_teams"]
    assert action in ADMITTED_ACTIONS or job_team == actor.team  # another team's jobs: never read or stopped


def test_refusals_name_the_team_the_action_and_the_cluster():
    policy = _policy(["alpha", "beta"], [])
    verdict = authorize(policy, Actor("alpha"), Action.STOP, "beta-cluster", _cluster("beta"))
    assert not verdict.allowed
    assert verdict.reason == "team 'alpha' may not stop jobs on Ray cluster 'beta-cluster': it belongs to team 'beta'"


def test_an_admitted_team_submits_but_never_deletes_nor_touches_the_owners_jobs():
    policy = _policy(["alpha", "beta"], [])
    shared = _cluster("beta", admits=("alpha",))
    assert authorize(policy, Actor("alpha"), Action.SUBMIT, "c", shared).allowed
    assert authorize(policy, Actor("alpha"), Action.READ_LOGS, "c", shared, job_team="alpha").allowed
    assert not authorize(policy, Actor("alpha"), Action.READ_LOGS, "c", shared, job_team="beta").allowed
    assert not authorize(policy, Actor("alpha"), Action.DELETE, "c", shared).allowed
    assert authorize(policy, Actor(None, cleanup=True), Action.DELETE, "c", shared).allowed
    assert not authorize(policy, Actor(None, cleanup=True), Action.SUBMIT, "c", shared).allowed


def test_without_a_policy_everything_but_deleting_an_unmanaged_cluster_is_allowed():
    unmanaged = _cluster(None, managed=False)
    assert authorize(None, Actor(None), Action.SUBMIT, "c", unmanaged).allowed
    refused = authorize(None, Actor(None), Action.DELETE, "c", unmanaged)
    assert not refused.allowed and "does not manage it" in refused.reason


def test_a_team_that_requires_the_sandbox_uses_only_sandboxed_clusters():
    policy = Policy.model_validate(
        {
            "teams": {
                "alpha": {"match": {"dag_ids": ["alpha_*"]}, "sandbox": "required"},
                "beta": {"match": {"dag_ids": ["beta_*"]}},
            }
        }
    )
    for action in (Action.USE, Action.SUBMIT, Action.CONNECT):
        refused = authorize(policy, Actor("alpha"), action, "c", _cluster("alpha", sandboxed=False))
        assert not refused.allowed and "runs outside the local backend's sandbox" in refused.reason
        assert authorize(policy, Actor("alpha"), action, "c", _cluster("alpha", sandboxed=True)).allowed
        # KubeRay's clusters are pods: the local sandbox does not apply to them
        assert authorize(policy, Actor("alpha"), action, "c", _cluster("alpha", sandboxed=None)).allowed
        assert authorize(policy, Actor("beta"), action, "c", _cluster("beta", sandboxed=False)).allowed
    # what it must still do on an unsandboxed cluster of its own: release, stop its jobs, delete it
    for action in (Action.RELEASE, Action.STOP, Action.DELETE):
        assert authorize(policy, Actor("alpha"), action, "c", _cluster("alpha", sandboxed=False)).allowed
