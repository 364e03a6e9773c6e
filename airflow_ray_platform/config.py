"""What the user asks for: the ``job_configuration`` models.

One pydantic model, :class:`JobConfiguration`, is a team's whole request: who owns the work, which
cluster it runs on (an existing one by name, or a spec to create), the Ray job, and what happens to
the cluster afterwards. Field names follow Ray (``entrypoint``, ``runtime_env``,
``entrypoint_num_cpus``) and KubeRay (``ray_version``, ``worker_groups`` with ``min_replicas`` /
``max_replicas``) so that users can carry their knowledge over. Every model forbids unknown keys: a
misspelt field is an error that names it, raised before anything is created.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from kubernetes.utils.quantity import parse_quantity
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Cluster and job names become Kubernetes object and pod names; KubeRay appends suffixes such as
#: ``-head-xxxxx`` and ephemeral clusters get ``-<8 hex>``, so the user's part stays well under 63.
MAX_NAME_LENGTH = 40
MIN_TOKEN_AUTH_RAY = (2, 52)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

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


def _label_value(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise ValueError(
            "must be a Kubernetes label value: at most 63 characters of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit"
        )
    return value


def _quantity(value: Any) -> str:
    """Accept Kubernetes quantities ("2", "500m", "4Gi") and plain numbers; keep the text form."""
    if isinstance(value, bool):
        raise ValueError("must be a Kubernetes quantity such as '2', '500m' or '4Gi'")
    try:
        parsed = parse_quantity(value)
    except (ValueError, TypeError) as error:
        raise ValueError("must be a Kubernetes quantity such as '2', '500m' or '4Gi'") from error
    if parsed < 0:
        raise ValueError("must not be negative")
    return str(value)


DnsName = Annotated[str, BeforeValidator(_dns1123_name)]
LabelValue = Annotated[str, BeforeValidator(_label_value)]
Quantity = Annotated[str, BeforeValidator(_quantity)]


def quantity_value(quantity: str) -> Decimal:
    """The numeric value of a validated quantity (cores for cpu, bytes for memory)."""
    return parse_quantity(quantity)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Toleration(_Strict):
    """A Kubernetes toleration, with the Kubernetes field names."""

    key: str | None = None
    operator: str = Field("Equal", pattern="^(Equal|Exists)$")
    value: str | None = None
    effect: str | None = Field(None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")
    tolerationSeconds: int | None = Field(None, ge=0)


class NodeResources(_Strict):
    """Resources of one Ray node (a pod on Kubernetes, a ``ray start`` process locally)."""

    cpu: Quantity = "1"
    memory: Quantity = "2Gi"
    gpu: int = Field(0, ge=0)
    object_store_memory: Quantity | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    ray_start_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("cpu")
    @classmethod
    def _positive_cpu(cls, value: str) -> str:
        if quantity_value(value) <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("memory")
    @classmethod
    def _enough_memory(cls, value: str) -> str:
        if quantity_value(value) < 256 * 1024**2:
            raise ValueError("must be at least 256Mi (a Ray node does not start with less)")
        return value


class HeadSpec(NodeResources):
    """The Ray head node."""


class WorkerGroupSpec(NodeResources):
    """A group of identical Ray worker nodes (KubeRay's ``workerGroupSpecs`` entry)."""

    group_name: DnsName
    replicas: int = Field(1, ge=0)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _replica_bounds(self) -> WorkerGroupSpec:
        maximum = self.max_replicas if self.max_replicas is not None else max(self.replicas, 1)
        if not self.min_replicas <= self.replicas <= maximum:
            raise ValueError(
                f"replicas must lie between min_replicas and max_replicas "
                f"(got min_replicas={self.min_replicas}, replicas={self.replicas}, max_replicas={maximum})"
            )
        return self


class ClusterSpec(_Strict):
    """Which cluster a job runs on.

    With only ``name``, it names an existing cluster to reuse (nothing is created). With any spec
    field, it describes a cluster to create (or to get, if one of that name already exists).
    """

    name: DnsName | None = None
    ray_version: str | None = Field(None, pattern=r"^\d+\.\d+(\.\d+)?$")
    image: str | None = None
    head: HeadSpec = Field(default_factory=HeadSpec)
    worker_groups: list[WorkerGroupSpec] = Field(default_factory=list)
    autoscaling: bool = False
    idle_timeout: timedelta = timedelta(minutes=30)
    max_lifetime: timedelta = timedelta(hours=24)
    service_account: str | None = None
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    #: Ray token authentication (KubeRay ``authOptions.mode``); the local backend always uses tokens.
    auth: Literal["token", "disabled"] = "token"

    @property
    def reuses_existing(self) -> bool:
        """True when the configuration only names a cluster that must already exist."""
        return self.name is not None and self.model_fields_set <= {"name"}

    @field_validator("idle_timeout", "max_lifetime")
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
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

    pip: list[str] | dict[str, Any] | None = None
    env_vars: dict[str, str] | None = None
    working_dir: str | None = None

    @model_validator(mode="after")
    def _known_fields_only(self) -> RuntimeEnv:
        unknown = sorted(set(self.model_extra or {}) - RUNTIME_ENV_FIELDS)
        if unknown:
            raise ValueError(f"unknown runtime_env field(s) {unknown}; Ray knows {sorted(RUNTIME_ENV_FIELDS)}")
        return self

    def to_ray(self) -> dict[str, Any]:
        """The dict Ray's Jobs API takes, without unset fields."""
        return self.model_dump(exclude_none=True)


class JobSpec(_Strict):
    """The Ray job, with the Ray Jobs API's names."""

    entrypoint: str = Field(min_length=1)
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    entrypoint_num_cpus: float | None = Field(None, ge=0)
    entrypoint_num_gpus: float | None = Field(None, ge=0)
    entrypoint_memory: int | None = Field(None, ge=0)
    entrypoint_resources: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    timeout: timedelta | None = None

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


class LifecycleSpec(_Strict):
    """What happens around the job (dagster-ray's create / wait / cleanup, made explicit)."""

    shutdown_after_job: bool = True
    keep_cluster_on_failure: bool = False
    startup_timeout: timedelta = timedelta(minutes=10)


class JobConfiguration(_Strict):
    """A team's whole request: owner, cluster, job and lifecycle."""

    name: DnsName
    owner: LabelValue
    team: LabelValue
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    job: JobSpec | None = None
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)

    @field_validator("owner", "team")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @property
    def cluster_name(self) -> str:
        """The name of the named cluster this configuration creates or reuses."""
        return self.cluster.name or self.name


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _location(parts: tuple[int | str, ...]) -> str:
    """``cluster.worker_groups.0.cpu``; keys that are not plain names are quoted (``cluster["a b"]``)."""
    text = ""
    for part in parts:
        if isinstance(part, str) and _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "job_configuration"


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = _location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field (misspelt?)"
        lines.append(f"  {location}: {message}")
    return "invalid job_configuration:\n" + "\n".join(lines)


def load_job_configuration(value: JobConfiguration | Mapping[str, Any] | str | Path) -> JobConfiguration:
    """Accept the model itself, a dict, or the path of a YAML/JSON file, and validate it.

    Raises :class:`JobConfigurationError` whose message names every offending field and its rule.
    """
    if isinstance(value, JobConfiguration):
        return value
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise JobConfigurationError(f"job_configuration file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise JobConfigurationError(f"job_configuration file {str(path)!r} is not valid: {error}") from error
    if not isinstance(value, Mapping):
        raise JobConfigurationError(
            f"job_configuration must be a mapping, a YAML/JSON file path or a JobConfiguration "
            f"(got {type(value).__name__})"
        )
    try:
        return JobConfiguration.model_validate(dict(value))
    except ValidationError as error:
        raise JobConfigurationError(_format_errors(error)) from None
