"""What the user asks for: the ``job_configuration`` models.

One pydantic model, :class:`JobConfiguration`, is a team's whole request: who owns the work, which
cluster it runs on (an existing one by name, or a spec to create), the Ray job, and what happens to
the cluster afterwards. Field names follow Ray (``entrypoint``, ``runtime_env``,
``entrypoint_num_cpus``) and KubeRay (``ray_version``, ``worker_groups`` with ``min_replicas`` /
``max_replicas``) so that users can carry their knowledge over. Every model forbids unknown keys: a
misspelt field is an error that names it, raised before anything is created.
"""

from __future__ import annotations

import enum
import json
import re
import shlex
import warnings
from collections.abc import Iterable, Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from airflow_ray_platform.spec.quantities import QUANTITY_TEXT, parse_quantity

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Cluster and job names become Kubernetes object and pod names; KubeRay appends suffixes such as
#: ``-head-xxxxx`` and ephemeral clusters get ``-<8 hex>``, so the user's part stays well under 63.
MAX_NAME_LENGTH = 40
MIN_TOKEN_AUTH_RAY = (2, 52)
#: Where a cluster's image comes from when the configuration names none (``<repository>:<ray>-py<xy>``).
DEFAULT_IMAGE_REPOSITORY = "rayproject/ray"
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
#: A Kubernetes qualified name (label and node-selector keys): an optional DNS subdomain prefix and "/",
#: then at most 63 characters of letters, digits, "-", "_" and ".", alphanumeric at both ends.
QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: ``ray start`` options the backends set themselves, for the cluster's security and bookkeeping (where
#: it listens, its ports, its temp dir, its caps, token auth, usage stats): ``ray_start_params`` cannot
#: override them.
#: The longest user-written key an error message shows whole.
SHOWN_KEY_CHARS = 32
#: How a ``ray_start_params`` key must look: a ``ray start`` option's name, without ``--``.
RAY_OPTION_NAME = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
RESERVED_RAY_START_PARAMS = frozenset(
    {
        "address",
        "block",
        "head",
        "port",
        "node-ip-address",
        "node-manager-port",
        "object-manager-port",
        "dashboard-host",
        "dashboard-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "ray-client-server-port",
        "include-dashboard",
        "temp-dir",
        "num-cpus",
        "num-gpus",
        "memory",
        "disable-usage-stats",
        "redis-password",
        "gcs-server-port",
    }
)
#: The most nodes a worker group may have: Ray's documented scalability envelope (2,000 nodes).
MAX_GROUP_REPLICAS = 2000
#: Shorter idle timeouts are a mistake, not a wish: the cleanup DAG runs every 10 minutes.
MIN_IDLE_TIMEOUT = timedelta(minutes=1)

RUNTIME_ENV_FIELDS = frozenset(
    {
        "working_dir",
        "py_modules",
        "py_executable",
        "excludes",
        "pip",
        "uv",
        "conda",
        "env_vars",
        "image_uri",
        "container",
        "config",
        "nsight",
        "worker_process_setup_hook",
        "java_jars",
    }
)


class JobConfigurationError(ValueError):
    """A ``job_configuration`` broke a rule; the message names each field and its rule."""


def _dns1123_name(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
        )
    return value


def is_label_value(value: str) -> bool:
    """Kubernetes' rule for a label value (what a team or an owner must be)."""
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def _label_value(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not is_label_value(value):
        raise ValueError(
            "must be a Kubernetes label value: at most 63 characters of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit"
        )
    return value


def _quantity(value: Any) -> str:
    """Accept Kubernetes quantities ("2", "500m", "4Gi") and plain numbers; keep the text form."""
    rule = "must be a Kubernetes quantity such as '2', '500m' or '4Gi'"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueError(rule)
    if isinstance(value, str) and not QUANTITY_TEXT.match(value):
        raise ValueError(rule)
    try:
        parsed = parse_quantity(value)
    except (ValueError, TypeError) as error:
        raise ValueError(rule) from error
    if not parsed.is_finite():
        raise ValueError("must be a finite number")
    if parsed < 0:
        raise ValueError("must not be negative")
    return str(value)


def _qualified_name(value: str) -> str:
    if not isinstance(value, str) or len(value.rpartition("/")[2]) > 63 or not QUALIFIED_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes qualified name: an optional DNS prefix and '/', then at most 63 "
            "characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return value


def validate_cluster_name(name: object, field: str = "cluster_name") -> str:
    """A cluster name given anywhere (an operator argument, a path of the local registry): a DNS-1123
    label, so that it can be neither a path nor an injection. Raises JobConfigurationError naming ``field``."""
    if not isinstance(name, str) or len(name) > 63 or not DNS1123_LABEL.match(name):
        raise JobConfigurationError(
            f"{field}: {name!r} is not a cluster name (a DNS-1123 label: at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit)"
        )
    return name


DnsName = Annotated[str, BeforeValidator(_dns1123_name)]
LabelValue = Annotated[str, BeforeValidator(_label_value)]
LabelKey = Annotated[str, BeforeValidator(_qualified_name)]
Quantity = Annotated[str, BeforeValidator(_quantity)]
#: A finite, non-negative amount of a resource (NaN and infinity are refused).
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Toleration(_Strict):
    """A Kubernetes toleration, with the Kubernetes field names."""

    key: str | None = Field(None, description="Taint key the toleration matches; empty with `Exists` matches all.")
    operator: str = Field("Equal", pattern="^(Equal|Exists)$", description="`Equal` or `Exists`.")
    value: str | None = Field(None, description="Taint value to match (with `Equal`).")
    effect: str | None = Field(
        None,
        pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$",
        description="Taint effect to match: `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all.",
    )
    tolerationSeconds: int | None = Field(None, ge=0, description="How long a `NoExecute` taint is tolerated.")


def requested_resources(nodes: Iterable[tuple[object, object, object, int]]) -> dict[str, float]:
    """Ray's names (``CPU``, ``GPU``, ``memory`` in bytes) for what ``nodes`` request in all.

    ``nodes``: ``(cpu, memory, gpu, count)`` per kind of node, as quantities. The one rule for
    requested resources: a configuration's cluster, a local cluster's record and a RayCluster read
    back from Kubernetes all come through here, so cost export, records and the GC report agree.
    """
    totals = {"CPU": Decimal(0), "GPU": Decimal(0), "memory": Decimal(0)}
    for cpu, memory, gpu, count in nodes:
        totals["CPU"] += parse_quantity(cpu) * count
        totals["memory"] += parse_quantity(memory) * count
        totals["GPU"] += parse_quantity(gpu) * count
    return {key: float(value) for key, value in totals.items()}


class NodeResources(_Strict):
    """Resources of one Ray node (a pod on Kubernetes, a ``ray start`` process locally)."""

    cpu: Quantity = Field("1", description="CPUs of the node, a Kubernetes quantity (`2`, `500m`).")
    memory: Quantity = Field("2Gi", description="Memory of the node, a Kubernetes quantity (at least `256Mi`).")
    gpu: int = Field(0, ge=0, description="GPUs of the node (`nvidia.com/gpu` on Kubernetes; logical locally).")
    object_store_memory: Quantity | None = Field(
        None, description="Ray's object store size (default: Ray's, or 30% of `memory` locally)."
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Kubernetes `nodeSelector` of the node's pod (kuberay)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Kubernetes tolerations of the node's pod (kuberay)."
    )
    ray_start_params: dict[str, str] = Field(
        default_factory=dict, description="Extra `ray start` options, by Ray's names without `--`."
    )

    @field_validator("ray_start_params")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        # As ``ray start`` would read the key, however it is spelled: spaces, dashes, case, an ``=value``.
        spelled = {key: key.strip().lstrip("-").split("=")[0].replace("_", "-").lower() for key in value}
        reserved = sorted(shown_key(key) for key, name in spelled.items() if name in RESERVED_RAY_START_PARAMS)
        if reserved:
            raise ValueError(
                f"{reserved} are set by the backend (where Ray listens, its ports, temp dir and caps) and cannot "
                "be overridden; use the node's cpu, memory, gpu and object_store_memory fields for its caps"
            )
        malformed = sorted(shown_key(key) for key in value if not RAY_OPTION_NAME.fullmatch(key))
        if malformed:
            raise ValueError(
                f"{malformed} are not `ray start` option names: lowercase words joined by - or _, without --"
            )
        return value

    @field_validator("cpu")
    @classmethod
    def _positive_cpu(cls, value: str) -> str:
        if parse_quantity(value) <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("memory")
    @classmethod
    def _enough_memory(cls, value: str) -> str:
        if parse_quantity(value) < 256 * 1024**2:
            raise ValueError("must be at least 256Mi (a Ray node does not start with less)")
        return value


class HeadSpec(NodeResources):
    """The Ray head node."""


class WorkerGroupSpec(NodeResources):
    """A group of identical Ray worker nodes (KubeRay's ``workerGroupSpecs`` entry)."""

    group_name: DnsName = Field(description="The group's name (KubeRay `groupName`), unique in the cluster.")
    replicas: int = Field(1, ge=0, le=MAX_GROUP_REPLICAS, description="Worker nodes started with the cluster.")
    min_replicas: int = Field(0, ge=0, le=MAX_GROUP_REPLICAS, description="Fewest worker nodes the autoscaler keeps.")
    max_replicas: int | None = Field(
        None,
        ge=0,
        le=MAX_GROUP_REPLICAS,
        description="Most worker nodes the autoscaler starts (default: `replicas`).",
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> WorkerGroupSpec:
        maximum = self.max_replicas if self.max_replicas is not None else max(self.replicas, 1)
        if not self.min_replicas <= self.replicas <= maximum:
            raise ValueError(
                f"replicas must lie between min_replicas and max_replicas "
                f"(got min_replicas={self.min_replicas}, replicas={self.replicas}, max_replicas={maximum})"
            )
        return self


def _differences(existing: Any, requested: Any, path: str) -> list[str]:
    if isinstance(existing, Mapping) and isinstance(requested, Mapping):
        keys = sorted(set(existing) | set(requested))
        return [diff for key in keys for diff in _differences(existing.get(key), requested.get(key), f"{path}.{key}")]
    if isinstance(existing, list) and isinstance(requested, list) and len(existing) == len(requested):
        return [
            diff
            for index, (old, new) in enumerate(zip(existing, requested, strict=True))
            for diff in _differences(old, new, f"{path}[{index}]")
        ]
    if existing == requested:
        return []
    return [f"{path}: existing {json.dumps(existing)}, requested {json.dumps(requested)}"]


class ClusterSpec(_Strict):
    """Which cluster a job runs on.

    With only ``name``, it names an existing cluster to reuse (nothing is created). With any spec
    field, it describes a cluster to create (or to get, if one of that name already exists).
    """

    name: DnsName | None = Field(
        None, description="The cluster's name; alone, an existing cluster to reuse (default: the configuration's)."
    )
    ray_version: str | None = Field(
        None, pattern=r"^\d+\.\d+(\.\d+)?$", description="Ray version of the cluster (default: the worker's Ray)."
    )
    image: str | None = Field(
        None,
        pattern=r"^\S+$",
        description="Container image of every node (kuberay; default `rayproject/ray:<version>-py<python>`).",
    )
    head: HeadSpec = Field(default_factory=HeadSpec, description="The head node's resources.")
    worker_groups: list[WorkerGroupSpec] = Field(default_factory=list, description="Groups of worker nodes.")
    autoscaling: bool = Field(False, description="Ray's autoscaler between each group's min and max replicas.")
    idle_timeout: timedelta = Field(
        timedelta(minutes=30), description="The cleanup DAG deletes the cluster after this long without a job."
    )
    max_lifetime: timedelta = Field(
        timedelta(hours=24), description="The cleanup DAG deletes the cluster once it is this old and has no job."
    )
    service_account: str | None = Field(None, description="Kubernetes service account of the pods (kuberay).")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Extra labels on the cluster (and its pods on Kubernetes)."
    )
    auth: Literal["token", "disabled"] = Field(
        "token", description="Ray token authentication (KubeRay `authOptions.mode`); always on locally."
    )
    admit_teams: list[LabelValue] = Field(
        default_factory=list,
        description="Other teams that may use this cluster (submit jobs, take leases) under a platform policy; "
        "only its own team deletes it.",
    )

    @property
    def reuses_existing(self) -> bool:
        """True when the configuration only names a cluster that must already exist."""
        return self.name is not None and self.model_fields_set <= {"name"}

    @property
    def requested_resources(self) -> dict[str, float]:
        """What the cluster requests in all: the head and every worker replica."""
        groups = [(group.cpu, group.memory, group.gpu, group.replicas) for group in self.worker_groups]
        return requested_resources([(self.head.cpu, self.head.memory, self.head.gpu, 1), *groups])

    @property
    def ceiling_resources(self) -> dict[str, float]:
        """What the cluster can grow to: the head and every worker group at its ``max_replicas`` (else
        ``replicas``). What a platform policy's ceilings are checked against."""
        groups = [
            (group.cpu, group.memory, group.gpu, max(group.replicas, group.max_replicas or 0))
            for group in self.worker_groups
        ]
        return requested_resources([(self.head.cpu, self.head.memory, self.head.gpu, 1), *groups])

    def recorded(self) -> dict[str, Any]:
        """The spec as a backend keeps it beside the cluster (JSON, without the name), so that a later
        request for the same name can be compared with what was created."""
        return self.model_dump(mode="json", exclude={"name"})

    def differences_from(self, recorded: Mapping[str, Any]) -> list[str]:
        """``field: existing …, requested …`` for each field where a recorded spec differs from this one."""
        try:  # through the model, so that defaults added since it was recorded compare equal
            existing = ClusterSpec.model_validate(recorded).recorded()
        except ValidationError:
            existing = dict(recorded)
        return _differences(existing, self.recorded(), "cluster")

    @field_validator("idle_timeout", "max_lifetime")
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        if value < MIN_IDLE_TIMEOUT:
            raise ValueError(f"must be at least {int(MIN_IDLE_TIMEOUT.total_seconds())} seconds")
        return value

    @model_validator(mode="after")
    def _token_auth_needs_ray_2_52(self) -> ClusterSpec:
        if self.auth == "token" and self.ray_version is not None:
            version = tuple(int(part) for part in self.ray_version.split("."))
            if version < MIN_TOKEN_AUTH_RAY:
                raise ValueError(
                    f"ray_version {self.ray_version} has no token authentication (needs Ray >= 2.52 and "
                    f"KubeRay >= 1.5.1); use a newer ray_version, or set auth: disabled to run without it"
                )
        return self

    @model_validator(mode="after")
    def _unique_groups(self) -> ClusterSpec:
        names = [group.group_name for group in self.worker_groups]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"worker_groups[].group_name must be unique (repeated: {duplicates})")
        return self


class RuntimeEnv(BaseModel):
    """Ray's ``runtime_env``; the common fields are typed, Ray's other known fields pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    pip: list[str] | dict[str, Any] | None = Field(None, description="Packages pip installs for the job.")
    env_vars: dict[str, str] | None = Field(None, description="Environment variables of the job's processes.")
    working_dir: str | None = Field(None, description="Directory (or URI) uploaded as the job's working directory.")

    @model_validator(mode="after")
    def _known_fields_only(self) -> RuntimeEnv:
        unknown = sorted(shown_key(key) for key in set(self.model_extra or {}) - RUNTIME_ENV_FIELDS)
        if unknown:
            raise ValueError(f"unknown runtime_env field(s) {unknown}; Ray knows {sorted(RUNTIME_ENV_FIELDS)}")
        return self

    def to_ray(self) -> dict[str, Any]:
        """The dict Ray's Jobs API takes, without unset fields."""
        return self.model_dump(exclude_none=True)


class JobSpec(_Strict):
    """The Ray job, with the Ray Jobs API's names."""

    entrypoint: str = Field(min_length=1, description="The shell command Ray runs as the job's driver.")
    args: list[str] = Field(
        default_factory=list,
        description="Arguments appended to `entrypoint`, each quoted for the shell: put params here, never "
        "into `entrypoint`, so a value never runs as a command.",
    )
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv, description="Ray's `runtime_env` of the job.")
    entrypoint_num_cpus: Amount | None = Field(None, description="CPUs reserved for the driver.")
    entrypoint_num_gpus: Amount | None = Field(None, description="GPUs reserved for the driver.")
    entrypoint_memory: int | None = Field(None, ge=0, description="Memory in bytes reserved for the driver.")
    entrypoint_resources: dict[str, Amount] = Field(
        default_factory=dict, description="Custom Ray resources reserved for the driver."
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Ray job metadata (the provider adds its own).")
    timeout: timedelta | None = Field(None, description="Stop the job and fail the task after this long.")

    @field_validator("entrypoint")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @property
    def command(self) -> str:
        """The shell command Ray runs: ``entrypoint``, then each of ``args`` quoted (``shlex.quote``)."""
        return " ".join([self.entrypoint, *(shlex.quote(arg) for arg in self.args)])

    def submission(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        """The job as Ray's Jobs API submits it (``JobSubmissionClient.submit_job``'s arguments, unset
        ones left out), with the provider's ``metadata`` over the user's. The one rendering of a job:
        the KubeRay backend maps these same fields onto a RayJob."""
        fields: dict[str, Any] = {
            "entrypoint": self.command,
            "metadata": {**self.metadata, **metadata},
            "runtime_env": self.runtime_env.to_ray() or None,
            "entrypoint_num_cpus": self.entrypoint_num_cpus,
            "entrypoint_num_gpus": self.entrypoint_num_gpus,
            "entrypoint_memory": self.entrypoint_memory,
            "entrypoint_resources": self.entrypoint_resources or None,
        }
        return {key: value for key, value in fields.items() if value is not None}


class ClusterCleanup(enum.StrEnum):
    """What happens to the cluster a job ran on once it ends (cncf-kubernetes' ``on_finish_action``).

    ``always`` and ``on_success`` give each task a cluster of its own (ephemeral, deleted when its job ends,
    or only when it succeeded: a failed one is kept for debugging until the cleanup DAG's idle timeout);
    ``never`` runs on the named cluster ``cluster.name``, shared and kept.
    """

    ALWAYS = "always"
    ON_SUCCESS = "on_success"
    NEVER = "never"


class JobConfigurationDeprecationWarning(FutureWarning):
    """A ``job_configuration`` field that still works but has a replacement (shown to DAG authors)."""


class LifecycleSpec(_Strict):
    """What happens around the job (dagster-ray's create / wait / cleanup, made explicit)."""

    cleanup: ClusterCleanup = Field(
        ClusterCleanup.ALWAYS,
        description="`RayJobOperator` with a cluster spec: `always` (a cluster per task, deleted when its job "
        "ends), `on_success` (the same, kept after a failure for debugging until the cleanup DAG removes it) "
        "or `never` (the named cluster `cluster.name`, shared and kept).",
    )
    startup_timeout: timedelta = Field(
        timedelta(minutes=10), description="Fail the task when the cluster is not ready within this long."
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_cleanup_booleans(cls, data: Any) -> Any:
        """``shutdown_after_job`` and ``keep_cluster_on_failure``, the two booleans ``cleanup`` replaces."""
        if not isinstance(data, Mapping) or not {"shutdown_after_job", "keep_cluster_on_failure"} & data.keys():
            return data
        data = dict(data)
        if "cleanup" in data:
            raise ValueError("cleanup: give it alone, not with shutdown_after_job or keep_cluster_on_failure")
        shutdown, keep = data.pop("shutdown_after_job", True), data.pop("keep_cluster_on_failure", False)
        for field, value in (("shutdown_after_job", shutdown), ("keep_cluster_on_failure", keep)):
            if not isinstance(value, bool):
                raise ValueError(f"{field}: must be true or false")
        cleanup = ClusterCleanup.NEVER if not shutdown else ClusterCleanup.ON_SUCCESS if keep else ClusterCleanup.ALWAYS
        warnings.warn(
            f"job_configuration.lifecycle: shutdown_after_job and keep_cluster_on_failure are deprecated; "
            f"write cleanup: {cleanup.value}",
            JobConfigurationDeprecationWarning,
            stacklevel=2,
        )
        data["cleanup"] = cleanup
        return data

    @property
    def ephemeral_cluster(self) -> bool:
        """Whether the job gets a cluster of its own (deleted after it) rather than the shared named one."""
        return self.cleanup != ClusterCleanup.NEVER

    def deletes_cluster(self, *, succeeded: bool) -> bool:
        """Whether a task's own cluster goes once its job ended (``succeeded`` or not)."""
        return self.cleanup == ClusterCleanup.ALWAYS or (self.cleanup == ClusterCleanup.ON_SUCCESS and succeeded)

    @field_validator("startup_timeout")
    @classmethod
    def _positive_startup_timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value


class JobConfiguration(_Strict):
    """A team's whole request: owner, cluster, job and lifecycle."""

    name: DnsName = Field(description="DNS-1123, at most 40 characters: the cluster's name and ephemeral prefix.")
    owner: LabelValue = Field(description="Who owns the work: a label value, for cost attribution and access.")
    team: LabelValue = Field(description="The team billed for it: a label value.")
    cluster: ClusterSpec = Field(
        default_factory=ClusterSpec, description="The cluster: only `name` reuses one; any spec field creates."
    )
    job: JobSpec | None = Field(None, description="The Ray job (required by `RayJobOperator`).")
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec, description="What happens around the job.")

    @field_validator("owner", "team")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    def required_job(self) -> JobSpec:
        """The job, for whatever runs one (the operator, ``@task``-style callers, the CLI): its absence is a
        configuration error naming the field, raised before any cluster is created."""
        if self.job is None:
            raise JobConfigurationError("job_configuration.job: required to run a Ray job (entrypoint and options)")
        return self.job

    @property
    def cluster_name(self) -> str:
        """The name of the named cluster this configuration creates or reuses."""
        return self.cluster.name or self.name

    @property
    def requested_resources(self) -> dict[str, float | None]:
        """What the job asks for (``CPU``, ``GPU``, ``memory``): its driver's share of an existing
        cluster, or the whole cluster its configuration describes."""
        if not self.cluster.reuses_existing:
            return dict(self.cluster.requested_resources)
        job = self.job
        if job is None:
            return {"CPU": None, "GPU": None, "memory": None}
        return {"CPU": job.entrypoint_num_cpus, "GPU": job.entrypoint_num_gpus, "memory": job.entrypoint_memory}


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def shown_key(key: str) -> str:
    """A user's key as an error shows it: a short prefix of a long one (a secret pasted where a field name
    goes must not end up whole in a task log)."""
    return key if len(key) <= SHOWN_KEY_CHARS else key[: SHOWN_KEY_CHARS - 8] + "…"


def _location(parts: tuple[int | str, ...], root: str) -> str:
    """``cluster.worker_groups.0.cpu``; keys that are not plain names are quoted (``cluster["a b"]``); long
    keys shortened (:func:`shown_key`)."""
    text = ""
    for part in parts:
        if isinstance(part, str):
            part = shown_key(part)
        if isinstance(part, str) and _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or root


def format_validation_errors(error: ValidationError, root: str = "job_configuration") -> str:
    """One line per error, ``  <field path>: <rule>``, for a model read from a user's file or dict."""
    lines = []
    for item in error.errors():
        location = _location(item["loc"], root)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field (misspelt?)"
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def read_configuration_file(path: Path) -> Any:
    """A YAML (or ``.json``) file's document, not yet validated (templates may still be in it); a
    missing or unparsable file is a :class:`JobConfigurationError` saying where, never what it holds."""
    if not path.is_file():
        raise JobConfigurationError(f"job_configuration file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise JobConfigurationError(f"job_configuration file {str(path)!r} is not valid JSON at {where}") from None
    except yaml.YAMLError as error:  # where, never what: the file may be anything readable
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise JobConfigurationError(f"job_configuration file {str(path)!r} is not valid YAML{where}") from None


def load_job_configuration(value: JobConfiguration | Mapping[str, Any] | str | Path) -> JobConfiguration:
    """Accept the model itself, a dict, or the path of a YAML/JSON file, and validate it.

    Raises :class:`JobConfigurationError` whose message names every offending field and its rule.
    """
    if isinstance(value, JobConfiguration):
        return value
    if isinstance(value, str | Path):
        value = read_configuration_file(Path(value))
    if not isinstance(value, Mapping):
        raise JobConfigurationError(
            f"job_configuration must be a mapping, a YAML/JSON file path or a JobConfiguration "
            f"(got {type(value).__name__})"
        )
    try:
        return JobConfiguration.model_validate(dict(value))
    except ValidationError as error:
        raise JobConfigurationError("invalid job_configuration:\n" + format_validation_errors(error)) from None
