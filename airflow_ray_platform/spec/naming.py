"""Names, identifiers and labels derived from a task's identity.

Everything that must come out the same on every try of a task lives here: the deterministic Ray
``submission_id`` (dag_id, task_id, run_id and map_index, never the try number), the name of a
task's ephemeral cluster, and the labels that every backend puts on what it creates (they drive
reattach on retry, garbage collection and cost attribution).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from airflow_ray_platform.spec.timestamps import utc_now

LABEL_PREFIX = "airflow-ray-platform.io/"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "airflow-ray-platform"
OWNER_LABEL = LABEL_PREFIX + "owner"
TEAM_LABEL = LABEL_PREFIX + "team"
DAG_ID_LABEL = LABEL_PREFIX + "dag-id"
TASK_ID_LABEL = LABEL_PREFIX + "task-id"
RUN_ID_LABEL = LABEL_PREFIX + "run-id"
MAP_INDEX_LABEL = LABEL_PREFIX + "map-index"
EPHEMERAL_LABEL = LABEL_PREFIX + "ephemeral"
KEEP_LABEL = LABEL_PREFIX + "keep"
CREATED_AT_LABEL = LABEL_PREFIX + "created-at"
IDLE_TIMEOUT_LABEL = LABEL_PREFIX + "idle-timeout-seconds"
MAX_LIFETIME_LABEL = LABEL_PREFIX + "max-lifetime-seconds"
#: Ties a RayJob to the RayCluster it runs on (KubeRay's ``clusterSelector`` is not selectable).
CLUSTER_LABEL = LABEL_PREFIX + "cluster"
#: Full identifiers (too long or unsafe for a label value) go into annotations under this prefix.
ANNOTATION_PREFIX = LABEL_PREFIX
#: Moved forward on every submission: the activity mark garbage collection's compare-and-delete checks.
LAST_ACTIVE_ANNOTATION = ANNOTATION_PREFIX + "last-active-at"
#: Where a KubeRay cluster keeps its leases (JSON ``{key: lease}``) and the spec it was created from.
LEASES_ANNOTATION = ANNOTATION_PREFIX + "leases"
CLUSTER_SPEC_ANNOTATION = ANNOTATION_PREFIX + "cluster-spec"

#: Ray job metadata keys (metadata is free-form text, so the full identifiers fit). The reattach
#: decision reads the first two; the KubeRay backend copies the others onto the RayJob's labels.
TASK_KEY_METADATA = "airflow_task_key"
TRY_NUMBER_METADATA = "airflow_try_number"
DAG_ID_METADATA = "airflow_dag_id"
TASK_ID_METADATA = "airflow_task_id"
RUN_ID_METADATA = "airflow_run_id"
OWNER_METADATA = "owner"
TEAM_METADATA = "team"
#: Job metadata key -> the label carrying its (label-safe) value on a backend object.
METADATA_LABELS = {
    OWNER_METADATA: OWNER_LABEL,
    TEAM_METADATA: TEAM_LABEL,
    DAG_ID_METADATA: DAG_ID_LABEL,
    TASK_ID_METADATA: TASK_ID_LABEL,
    RUN_ID_METADATA: RUN_ID_LABEL,
}

#: Where Airflow's API server serves the provider's Ray view (``plugins.plugin``), under its base URL.
RAY_VIEW_PATH = "/ray"

#: XCom keys the operators push (downstream tasks, the extra link and the tests read them by name).
XCOM_CLUSTER_NAME = "cluster_name"
XCOM_DASHBOARD_URL = "dashboard_url"
XCOM_BACKEND = "backend"
XCOM_SUBMISSION_ID = "submission_id"
#: The page ``RayDashboardLink`` opens: the cluster's dashboard, then the job's page once submitted.
XCOM_DASHBOARD_LINK = "ray_dashboard_url"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def label_safe(value: object) -> str:
    """A Kubernetes label value for any text: unsafe characters folded, long values hashed.

    Label values are at most 63 characters of ``[A-Za-z0-9_.-]`` and start and end alphanumeric;
    run ids (``manual__2026-01-01T00:00:00+00:00``) are not, so they are folded and, when too long,
    cut and suffixed with a short hash so that two different values never collide.
    """
    text = str(value)
    safe = _UNSAFE.sub("_", text).strip("_.-")
    if len(safe) > 63 or safe != text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        safe = f"{safe[: 63 - 9].rstrip('_.-')}-{digest}".strip("_.-")
    return safe


@dataclass(frozen=True)
class TaskIdentity:
    """The Airflow coordinates of one task instance, without its try number."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1

    @classmethod
    def from_context(cls, context: Mapping) -> TaskIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        return cls(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else map_index)

    @property
    def key(self) -> str:
        return f"{self.dag_id}/{self.task_id}/{self.run_id}/{self.map_index}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()

    def submission_id(self, attempt: int = 1) -> str:
        """Ray submission id of this task's job; ``attempt`` > 1 only after a failed job's retry.

        A DNS-1123 label (KubeRay uses it as the RayJob's name): a readable prefix for the dashboard,
        a digest of the whole identity for uniqueness, at most 63 characters with the attempt suffix.
        """
        readable = _NOT_DNS.sub("-", f"{self.dag_id}-{self.task_id}".lower()).strip("-")[:30].rstrip("-")
        base = f"airflow-{readable}-{self.digest[:16]}"
        return base if attempt <= 1 else f"{base}-a{attempt}"

    def ephemeral_cluster_name(self, config_name: str) -> str:
        """The cluster a job creates for itself: the same on every try, so a retry finds it."""
        return f"{config_name}-{self.digest[:8]}"

    @classmethod
    def from_job_metadata(cls, metadata: Mapping[str, str]) -> TaskIdentity | None:
        """The task a job's metadata names (None for a job this provider did not submit)."""
        if not all(key in metadata for key in (TASK_KEY_METADATA, DAG_ID_METADATA, TASK_ID_METADATA, RUN_ID_METADATA)):
            return None
        map_index = metadata[TASK_KEY_METADATA].rsplit("/", 1)[-1]
        return cls(
            metadata[DAG_ID_METADATA],
            metadata[TASK_ID_METADATA],
            metadata[RUN_ID_METADATA],
            int(map_index) if map_index.lstrip("-").isdigit() else -1,
        )

    def job_metadata(self, try_number: int, owner: str, team: str) -> dict[str, str]:
        """The metadata every Ray job of this task carries: what reattach and cost attribution read."""
        return {
            TASK_KEY_METADATA: self.key,
            TRY_NUMBER_METADATA: str(try_number),
            DAG_ID_METADATA: self.dag_id,
            TASK_ID_METADATA: self.task_id,
            RUN_ID_METADATA: self.run_id,
            OWNER_METADATA: owner,
            TEAM_METADATA: team,
        }

    def labels(self) -> dict[str, str]:
        return {
            DAG_ID_LABEL: label_safe(self.dag_id),
            TASK_ID_LABEL: label_safe(self.task_id),
            RUN_ID_LABEL: label_safe(self.run_id),
            MAP_INDEX_LABEL: str(self.map_index),
        }


def job_labels(metadata: Mapping[str, str]) -> dict[str, str]:
    """Labels of a backend object that carries a Ray job (a RayJob), from its metadata."""
    return {label: label_safe(metadata[key]) for key, label in METADATA_LABELS.items() if key in metadata}


def job_annotations(metadata: Mapping[str, str]) -> dict[str, str]:
    """The job's full metadata as annotations (``airflow_dag_id`` -> ``…/airflow-dag-id``)."""
    return {ANNOTATION_PREFIX + key.replace("_", "-"): value for key, value in metadata.items()}


def cluster_labels(
    *,
    owner: str,
    team: str,
    idle_timeout_seconds: int,
    max_lifetime_seconds: int,
    identity: TaskIdentity | None = None,
    ephemeral: bool = False,
    extra: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Labels every backend puts on a cluster it creates."""
    created = (now or utc_now()).strftime("%Y%m%dT%H%M%SZ")  # label values cannot hold ":"
    labels = {
        **(extra or {}),
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        OWNER_LABEL: owner,
        TEAM_LABEL: team,
        CREATED_AT_LABEL: created,
        IDLE_TIMEOUT_LABEL: str(idle_timeout_seconds),
        MAX_LIFETIME_LABEL: str(max_lifetime_seconds),
        EPHEMERAL_LABEL: "true" if ephemeral else "false",
    }
    if identity is not None:
        labels.update(identity.labels())
    return labels


#: The DAG id ``airflow-ray submit`` records its runs under (their task id is the configuration's name).
CLI_DAG_ID = "airflow-ray-cli"
#: The DAG id interactive sessions (a notebook, ``airflow-ray session``) hold their leases under.
SESSION_DAG_ID = "airflow-ray-session"


def dashboard_job_url(dashboard_url: str, submission_id: str) -> str:
    """A job's page in the Ray dashboard at ``dashboard_url``."""
    return f"{dashboard_url.rstrip('/')}/#/jobs/{quote(submission_id, safe='')}"
