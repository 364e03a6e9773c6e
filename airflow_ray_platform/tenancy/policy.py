"""The platform policy: which team a task works for, and what each team may ask for.

A platform runs Ray for many teams and bills each of them, so a team cannot be whatever a
``job_configuration`` says. The platform team owns a YAML file (``[ray_platform] policy``) that maps
teams to what Airflow knows about a task (its DAG's bundle, id, tags and owners) and sets ceilings and
allow-lists, per team over platform defaults. :func:`configured_policy` reads it; :class:`Actor` is who
acts (a task, with the team the policy resolves for it, or the cleanup DAG); the authorization of each
action on a cluster is ``authorization.py``'s, and ``Policy.check_configuration`` is what a task's
configuration must satisfy before anything is created. Without a policy file the provider is
single-tenant: every task may act on every cluster, and a configuration's ``team`` is taken as said.

Which facts bind a team is the platform's choice. A DAG bundle binds as strongly as who may push to
it; a DAG id pattern, tags and owners are what a DAG's author writes, so they bind only as far as
deploying a DAG is controlled.
"""

from __future__ import annotations

import fnmatch
import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from airflow_ray_platform import settings
from airflow_ray_platform.spec.models import (
    DEFAULT_IMAGE_REPOSITORY,
    JobConfiguration,
    LabelValue,
    Quantity,
    Toleration,
    format_validation_errors,
    parse_quantity,
)
from airflow_ray_platform.spec.naming import KEEP_LABEL, TaskIdentity

#: The DAG whose tasks act as the platform's garbage collector (unless the policy names others).
CLEANUP_DAG_ID = "ray_cleanup_idle_clusters"


class PolicyError(ValueError):
    """The policy file is unreadable or breaks a rule (the message names the file's field)."""


class PolicyViolation(ValueError):
    """A task or its configuration breaks the policy; nothing was created, run or deleted."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamMatch(_Strict):
    """What ties a task to a team: every criterion given must hold (any one value of each list)."""

    bundles: list[str] = Field(default_factory=list, description="DAG bundle names the team's DAGs come from.")
    dag_ids: list[str] = Field(default_factory=list, description="DAG id patterns (`fnmatch`: `forecast_*`).")
    tags: list[str] = Field(default_factory=list, description="DAG tags, any one of which marks the team's DAGs.")
    owners: list[str] = Field(default_factory=list, description="DAG owners, any one of whom marks the team's DAGs.")

    @model_validator(mode="after")
    def _something(self) -> TeamMatch:
        if not (self.bundles or self.dag_ids or self.tags or self.owners):
            raise ValueError("needs at least one of bundles, dag_ids, tags, owners")
        return self

    def matches(self, dag: DagFacts) -> bool:
        return (
            (not self.bundles or dag.bundle in self.bundles)
            and (not self.dag_ids or any(fnmatch.fnmatchcase(dag.dag_id, pattern) for pattern in self.dag_ids))
            and (not self.tags or bool(dag.tags & set(self.tags)))
            and (not self.owners or bool(dag.owners & set(self.owners)))
        )


class Allowances(_Strict):
    """Ceilings and allow-lists; unset means the platform's defaults (which unset means no limit)."""

    max_cpus: Quantity | None = Field(None, description="CPUs a cluster may request in all (head and workers).")
    max_gpus: int | None = Field(None, ge=0, description="GPUs a cluster may request in all.")
    max_memory: Quantity | None = Field(None, description="Memory a cluster may request in all (`256Gi`).")
    max_worker_nodes: int | None = Field(
        None, ge=0, description="Worker nodes a cluster may have, counting each group's `max_replicas`."
    )
    max_lifetime: timedelta | None = Field(
        None,
        description="The longest `cluster.max_lifetime`, and a hard limit: past it the cleanup DAG stops the "
        "cluster's jobs and deletes it.",
    )
    images: list[str] | None = Field(
        None, description="Allowed images: registry/repository prefixes (`registry.corp/ray/`) or exact digests."
    )
    service_accounts: list[str] | None = Field(None, description="Allowed Kubernetes service accounts.")
    tolerations: list[Toleration] | None = Field(None, description="Allowed tolerations, exactly as written.")
    allow_auth_disabled: bool | None = Field(None, description="May run clusters without Ray token auth.")
    allow_keep: bool | None = Field(None, description=f"May label clusters `{KEEP_LABEL}` (exempt from GC).")
    sandbox: Literal["required"] | None = Field(
        None,
        description="`required`: on the local backend, the team's clusters run in its sandbox only. Creating "
        "one where the machine cannot make a sandbox (or the connection turns it off) is refused before "
        "anything starts, and so is using a cluster that runs outside one.",
    )

    daily_cost_budget: float | None = Field(
        None,
        ge=0,
        description="Estimated cost a day (the Ray view's prices) over which the shipped "
        "`RayPlatformTeamOverBudget` alert fires. Nothing is refused: the budget is for the people on call.",
    )

    @property
    def requires_sandbox(self) -> bool:
        return self.sandbox == "required"


class TeamPolicy(Allowances):
    """One team: how its tasks are recognised, its allowances, where its clusters live on Kubernetes."""

    match: TeamMatch = Field(description="What ties a task to this team.")
    namespace: str | None = Field(None, description="Kubernetes namespace of its clusters (kuberay backend).")
    kubernetes_conn_id: str | None = Field(None, description="Kubernetes connection of its clusters (kuberay).")


class CleanupIdentity(_Strict):
    """What makes a task, or ``airflow-ray gc``, the platform's garbage collector: the one identity that
    stops and deletes any team's clusters. A DAG id alone would let any DAG named so act as it: its bundle
    must be one the platform team alone pushes to."""

    bundles: list[str] = Field(
        default_factory=list,
        description="DAG bundles the cleanup DAG may come from. Empty: no DAG acts as the cleanup DAG (no "
        "other team's cluster is collected).",
    )
    dag_ids: list[str] = Field(default_factory=lambda: [CLEANUP_DAG_ID], description="Its DAG ids, in those bundles.")
    os_users: list[str] = Field(
        default_factory=list,
        description="Operating-system users whose `airflow-ray gc` acts as it (`alice`, or `os:alice` as the "
        "audit names them). Empty: nobody's.",
    )

    def admits_dag(self, dag: DagFacts) -> bool:
        return dag.dag_id in self.dag_ids and dag.bundle in self.bundles

    def admits_user(self, user: str | None) -> bool:
        return user is not None and user.removeprefix("os:") in {name.removeprefix("os:") for name in self.os_users}


class Policy(_Strict):
    """The whole policy file."""

    defaults: Allowances = Field(default_factory=Allowances, description="What every team gets unless it says.")
    teams: dict[LabelValue, TeamPolicy] = Field(description="The teams, by the name billed (a label value).")
    cleanup: CleanupIdentity = Field(
        default_factory=CleanupIdentity,
        description="Who garbage-collects: it alone deletes other teams' idle clusters.",
    )
    unowned_cluster_teams: list[LabelValue] = Field(
        default_factory=list,
        description="Teams that may use clusters no team owns (created outside the provider: a dashboard "
        "connection's cluster).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_dag_id_identity(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cleanup_dag_ids" in data:
            raise ValueError(
                "cleanup_dag_ids: replaced by cleanup: {bundles: [...], dag_ids: [...]} (a DAG id alone let any "
                "DAG of that name garbage-collect every team's clusters)"
            )
        return data

    @model_validator(mode="after")
    def _known_teams(self) -> Policy:
        unknown = sorted(set(self.unowned_cluster_teams) - set(self.teams))
        if unknown:
            raise ValueError(f"unowned_cluster_teams names teams the policy does not define: {unknown}")
        return self

    def team_of(self, dag: DagFacts) -> str:
        """The one team whose rule matches ``dag``; PolicyViolation if none or several do."""
        matching = [team for team, rule in self.teams.items() if rule.match.matches(dag)]
        if len(matching) == 1:
            return matching[0]
        facts = f"DAG {dag.dag_id!r} (bundle {dag.bundle!r}, tags {sorted(dag.tags)}, owners {sorted(dag.owners)})"
        if not matching:
            raise PolicyViolation(f"the platform policy assigns {facts} to no team: it may not use Ray clusters")
        raise PolicyViolation(f"the platform policy assigns {facts} to several teams {matching}: it must be one")

    def allowances(self, team: str) -> Allowances:
        """The team's own allowances over the platform defaults."""
        own = self.teams[team].model_dump(include=set(Allowances.model_fields), exclude_unset=True)
        return Allowances.model_validate({**self.defaults.model_dump(exclude_unset=True), **own})

    def check_configuration(self, team: str, config: JobConfiguration) -> None:
        """Refuse (naming each field and rule) a configuration team ``team`` may not run."""
        problems = []
        if config.team != team:
            problems.append(
                f"job_configuration.team: {config.team!r}, but the platform policy assigns this DAG to team "
                f"{team!r} (a team is billed only for its own DAGs)"
            )
        if not config.cluster.reuses_existing:
            problems += _cluster_problems(self.allowances(team), config)
        if problems:
            raise PolicyViolation(f"refused by the platform policy for team {team!r}:\n  " + "\n  ".join(problems))

    def hard_lifetime(self, team: str | None) -> timedelta | None:
        """The team's hard cluster lifetime (None: no hard limit)."""
        if team is None or team not in self.teams:
            return self.defaults.max_lifetime
        return self.allowances(team).max_lifetime


def _cluster_problems(allowed: Allowances, config: JobConfiguration) -> list[str]:
    cluster = config.cluster
    field = "job_configuration.cluster"
    problems = []
    # What the autoscaler may grow the cluster to, not what it starts with (found by review: replicas alone
    # let a group of max_replicas 128,000 pass a ceiling of 8 CPUs).
    ceiling = cluster.ceiling_resources
    at_most = "with every worker group at its max_replicas"
    if allowed.max_cpus is not None and ceiling["CPU"] > float(parse_quantity(allowed.max_cpus)):
        problems.append(
            f"{field}: up to {ceiling['CPU']:g} CPU {at_most}, over the policy's max_cpus {allowed.max_cpus}"
        )
    if allowed.max_memory is not None and ceiling["memory"] > float(parse_quantity(allowed.max_memory)):
        problems.append(
            f"{field}: up to {ceiling['memory'] / 1024**3:g}Gi of memory {at_most}, over the policy's max_memory "
            f"{allowed.max_memory}"
        )
    if allowed.max_gpus is not None and ceiling["GPU"] > allowed.max_gpus:
        problems.append(
            f"{field}: up to {ceiling['GPU']:g} GPU {at_most}, over the policy's max_gpus {allowed.max_gpus}"
        )
    nodes = sum(max(group.replicas, group.max_replicas or 0) for group in cluster.worker_groups)
    if allowed.max_worker_nodes is not None and nodes > allowed.max_worker_nodes:
        problems.append(
            f"{field}.worker_groups: up to {nodes} worker nodes, over the policy's max_worker_nodes "
            f"{allowed.max_worker_nodes}"
        )
    # Left unset, the cluster's max_lifetime is the default: the policy's hard limit applies to it anyway.
    if (
        allowed.max_lifetime is not None
        and "max_lifetime" in cluster.model_fields_set
        and cluster.max_lifetime > allowed.max_lifetime
    ):
        problems.append(
            f"{field}.max_lifetime: {cluster.max_lifetime.total_seconds():g} s, over the policy's max_lifetime "
            f"{allowed.max_lifetime.total_seconds():g} s"
        )
    image = cluster.image or f"{DEFAULT_IMAGE_REPOSITORY}:"
    if allowed.images is not None and not any(_image_allowed(image, entry) for entry in allowed.images):
        shown = cluster.image or f"the default {DEFAULT_IMAGE_REPOSITORY}"
        problems.append(f"{field}.image: {shown!r} is not among the policy's images {allowed.images}")
    if (
        cluster.service_account is not None
        and allowed.service_accounts is not None
        and cluster.service_account not in allowed.service_accounts
    ):
        problems.append(
            f"{field}.service_account: {cluster.service_account!r} is not among the policy's service_accounts "
            f"{allowed.service_accounts}"
        )
    permitted = allowed.tolerations or []
    nodes_with_tolerations = [("head", cluster.head)] + [
        (f"worker_groups[{index}]", group) for index, group in enumerate(cluster.worker_groups)
    ]
    for where, node in nodes_with_tolerations:
        for index, toleration in enumerate(node.tolerations):
            if toleration not in permitted:
                problems.append(
                    f"{field}.{where}.tolerations[{index}]: {toleration.model_dump(exclude_none=True)} is not among "
                    "the policy's tolerations"
                )
    if cluster.auth == "disabled" and not allowed.allow_auth_disabled:
        problems.append(f"{field}.auth: disabled (an unauthenticated Jobs API) is not allowed by the policy")
    if cluster.labels.get(KEEP_LABEL) == "true" and not allowed.allow_keep:
        problems.append(f"{field}.labels: {KEEP_LABEL} (exempt from garbage collection) is not allowed by the policy")
    return problems


def _image_allowed(image: str, entry: str) -> bool:
    """An exact digest (``…@sha256:…``) must be the image itself; anything else is a prefix."""
    return image == entry if "@" in entry else image.startswith(entry)


@dataclass(frozen=True)
class DagFacts:
    """What Airflow knows about the DAG a task belongs to: what a team is matched on."""

    dag_id: str
    bundle: str | None = None
    tags: frozenset[str] = frozenset()
    owners: frozenset[str] = frozenset()

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> DagFacts:
        ti = context["ti"]
        dag = context.get("dag")
        bundle = getattr(getattr(ti, "bundle_instance", None), "name", None)
        tags = frozenset(getattr(dag, "tags", None) or ())
        owners = frozenset(task.owner for task in getattr(dag, "tasks", ()) if getattr(task, "owner", None))
        return cls(ti.dag_id, bundle, tags, owners)


@dataclass(frozen=True)
class Actor:
    """Who acts on a cluster: a task (with its team) or the cleanup DAG; what the audit records.

    :param team: the team the policy resolved (without a policy: the configuration's, or None).
    :param identity: the task instance acting (None outside a task: a script or the CLI).
    :param try_number: the task's try.
    :param cleanup: a task of the platform's garbage collector.
    :param user: the Airflow user behind the action, where Airflow says one.
    """

    team: str | None
    identity: TaskIdentity | None = None
    try_number: int | None = None
    cleanup: bool = False
    user: str | None = None

    def __str__(self) -> str:
        who = "the cleanup DAG" if self.cleanup else f"team {self.team!r}" if self.team else "an unidentified caller"
        if self.identity is not None:
            who += f" (task {self.identity.key}, try {self.try_number})"
        if self.user:
            who += f" for user {self.user!r}"
        return who

    @property
    def key(self) -> str:
        """The actor as one line of the audit trail."""
        task = self.identity.key if self.identity is not None else "-"
        return f"{'cleanup' if self.cleanup else self.team or '-'}|{task}|{self.try_number or '-'}|{self.user or '-'}"

    def to_dict(self) -> dict[str, Any]:
        """What a trigger serialises, so that its calls act as its task did."""
        identity = self.identity
        return {
            "team": self.team,
            "identity": None
            if identity is None
            else [identity.dag_id, identity.task_id, identity.run_id, identity.map_index],
            "try_number": self.try_number,
            "cleanup": self.cleanup,
            "user": self.user,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Actor:
        identity = data.get("identity")
        return cls(
            team=data.get("team"),
            identity=None if identity is None else TaskIdentity(*identity),
            try_number=data.get("try_number"),
            cleanup=bool(data.get("cleanup")),
            user=data.get("user"),
        )

    @classmethod
    def outside_airflow(
        cls,
        team: str | None,
        identity: TaskIdentity | None = None,
        claimed_team: str | None = None,
        *,
        team_field: str = "team",
    ) -> Actor:
        """Who acts from a terminal or a notebook, as the operating-system user: without a policy, the
        configuration's team (single-tenant); under one, the ``team`` named (``team_field``: how the caller
        spells it), which must match the configuration's. Nobody is authenticated here: the caller acts
        with its own backend credentials, and the audit records the user."""
        if configured_policy() is not None:
            if not team:
                raise PolicyViolation(
                    f"{team_field}: required under the platform policy ([ray_platform] policy): you act as the "
                    "team you name, recorded with your user in the audit trail"
                )
            if claimed_team and claimed_team != team:
                raise PolicyViolation(f"team: the configuration's team {claimed_team!r} is not {team_field} {team!r}")
        return cls(team or claimed_team, identity, 1 if identity is not None else None, user=os_user())

    @classmethod
    def for_task(cls, context: Mapping[str, Any], policy: Policy | None, claimed_team: str | None = None) -> Actor:
        """The task of ``context``: its team by ``policy`` (without one: ``claimed_team``, the configuration's).

        Raises PolicyViolation when the policy assigns the DAG to no team or to several (a cleanup DAG
        needs no team).
        """
        ti = context["ti"]
        identity = TaskIdentity.from_context(context)
        try_number = int(getattr(ti, "try_number", None) or 1)
        if policy is None:
            return cls(claimed_team, identity, try_number, cleanup=ti.dag_id == CLEANUP_DAG_ID)
        dag = DagFacts.from_context(context)
        if policy.cleanup.admits_dag(dag):
            return cls(None, identity, try_number, cleanup=True)
        if dag.dag_id in policy.cleanup.dag_ids:
            raise PolicyViolation(
                f"DAG {dag.dag_id!r} comes from bundle {dag.bundle!r}, which the platform policy's cleanup.bundles "
                f"{policy.cleanup.bundles} does not name: it does not act as the cleanup DAG"
            )
        return cls(policy.team_of(dag), identity, try_number)

    @classmethod
    def cleanup_outside_airflow(cls, policy: Policy | None) -> Actor:
        """``airflow-ray gc``'s identity: the cleanup DAG's, for a user the policy's ``cleanup.os_users``
        names (anyone without a policy: single-tenant)."""
        user = os_user()
        if policy is not None and not policy.cleanup.admits_user(user):
            who = user or "this user"
            raise PolicyViolation(
                f"airflow-ray gc: under the platform policy only cleanup.os_users act as the cleanup DAG; {who} "
                "is not one"
            )
        return cls(None, cleanup=True, user=user)


def load_policy(path: str | Path) -> Policy:
    """The policy in the YAML file at ``path`` (read again once the file changes); PolicyError naming
    the file's field and rule, never its content."""
    path = Path(path)
    try:
        modified = path.stat().st_mtime_ns
    except OSError as error:
        raise PolicyError(f"platform policy file {str(path)!r} cannot be read: {error.strerror}") from None
    return _load(path, modified)


@lru_cache(maxsize=8)
def _load(path: Path, modified: int) -> Policy:
    """``modified`` only keys the cache: a changed file is a new entry."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise PolicyError(f"platform policy file {str(path)!r} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:  # where, never what
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PolicyError(f"platform policy file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(data, Mapping):
        raise PolicyError(f"platform policy file {str(path)!r} must hold a mapping with `teams:`")
    try:
        return Policy.model_validate(dict(data))
    except ValidationError as error:
        raise PolicyError(
            f"invalid platform policy {str(path)!r}:\n{format_validation_errors(error, 'policy')}"
        ) from None


def configured_policy() -> Policy | None:
    """``[ray_platform] policy``; None when unset (single-tenant)."""
    path = settings.policy_path()
    return load_policy(path) if path else None


def os_user() -> str | None:
    """The operating-system user, as the audit records someone acting outside Airflow."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return None
