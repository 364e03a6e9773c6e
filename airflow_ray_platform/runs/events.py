"""What a wait hands back to the operator: typed, frozen, the same for the blocking and the deferred path.

A trigger can only fire plain JSON (``TriggerEvent`` payloads are serialised), so each event has
``to_dict`` / ``from_dict``; the operator rebuilds the event from the payload when it resumes, and a
payload that lacks a field or carries an unknown status is an error there, not a silent default.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.records.utilisation import Utilisation


class WaitStatus(enum.StrEnum):
    """How a wait ended."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


def _required(payload: Mapping[str, Any], kind: str, *names: str) -> None:
    missing = [name for name in names if name not in payload]
    if missing:
        raise ValueError(f"{kind} payload lacks {missing}: {dict(payload)!r}")


@dataclass(frozen=True)
class JobEvent:
    """A Ray job's wait ended: terminal (``success`` / ``failed``, with Ray's state), ``timeout`` or ``error``.

    ``log_offset`` is how much of the driver log the task log already holds; ``utilisation`` what was
    sampled of the cluster while the job ran. ``finished``: the final state is recorded and the log
    persisted already (by the trigger, whose process is warm), so the resumed task has nothing left to
    ask Ray; ``result`` is then what the job handed back (``JobResult.to_dict()``).
    """

    status: WaitStatus
    submission_id: str
    cluster_name: str
    state: JobState | None = None
    message: str | None = None
    log_offset: int = 0
    ephemeral_cluster: bool = False
    utilisation: Utilisation = field(default_factory=Utilisation)
    finished: bool = False
    result: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == WaitStatus.SUCCESS

    @property
    def failure(self) -> str:
        """The task's error text: the job, how it ended, and the backend's (or Ray's) own reason."""
        how = self.state if self.state is not None else self.status.upper()
        return f"Ray job {self.submission_id!r} {how}: {self.message or 'no message'}"

    def to_dict(self) -> dict[str, Any]:
        payload = {
            "status": str(self.status),
            "submission_id": self.submission_id,
            "cluster_name": self.cluster_name,
            "message": self.message,
            "log_offset": self.log_offset,
            "ephemeral_cluster": self.ephemeral_cluster,
            "utilisation": self.utilisation.to_dict(),
        }
        if self.state is not None:
            payload["state"] = str(self.state)
        if self.finished:
            payload["finished"] = True
        if self.result is not None:
            payload["result"] = self.result
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> JobEvent:
        _required(payload, "Ray job event", "status", "submission_id", "cluster_name")
        return cls(
            status=WaitStatus(payload["status"]),
            submission_id=payload["submission_id"],
            cluster_name=payload["cluster_name"],
            state=JobState(payload["state"]) if payload.get("state") else None,
            message=payload.get("message"),
            log_offset=int(payload.get("log_offset") or 0),
            ephemeral_cluster=bool(payload.get("ephemeral_cluster")),
            utilisation=Utilisation.from_dict(payload.get("utilisation")),
            finished=bool(payload.get("finished")),
            result=payload.get("result"),
        )


@dataclass(frozen=True)
class ClusterEvent:
    """A wait for a cluster ended: ``success`` once it is ready, ``error`` with the backend's reason."""

    status: WaitStatus
    cluster_name: str
    ephemeral_cluster: bool = False
    dashboard_url: str | None = None
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == WaitStatus.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": str(self.status),
            "cluster_name": self.cluster_name,
            "ephemeral_cluster": self.ephemeral_cluster,
        }
        payload.update({key: value for key in ("dashboard_url", "message") if (value := getattr(self, key))})
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ClusterEvent:
        _required(payload, "Ray cluster event", "status", "cluster_name")
        return cls(
            status=WaitStatus(payload["status"]),
            cluster_name=payload["cluster_name"],
            ephemeral_cluster=bool(payload.get("ephemeral_cluster")),
            dashboard_url=payload.get("dashboard_url"),
            message=payload.get("message"),
        )
