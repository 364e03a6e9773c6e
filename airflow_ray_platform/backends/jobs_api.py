"""Ray jobs through the Ray Jobs API (the dashboard), on Ray's own ``JobSubmissionClient``.

Any backend whose cluster exposes a reachable dashboard uses this for the job half of the backend
interface. The bearer token goes into the client's headers only: it is never logged, and errors
raised from here never repeat request headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from ray.job_submission import JobDetails, JobSubmissionClient

from airflow_ray_platform.backends.base import BackendError, JobInfo, JobState
from airflow_ray_platform.config import JobSpec

_NOT_FOUND = re.compile(r"status code 404")
_ALREADY_EXISTS = re.compile(r"already exists")


def _millis(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, tz=UTC) if value else None


class JobsApiClient:
    """One cluster's Jobs API: idempotent submit, describe, list, logs, stop."""

    def __init__(
        self, cluster_name: str, address: str, token: str | None, verify: bool | str = True
    ) -> None:
        self.cluster_name = cluster_name
        self.address = address
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._client = JobSubmissionClient(address, headers=headers, verify=verify)
        except (ConnectionError, RuntimeError) as error:
            raise BackendError(f"cannot reach the Ray Jobs API of cluster {cluster_name!r}: {error}") from None

    def _info(self, details: JobDetails) -> JobInfo:
        return JobInfo(
            submission_id=details.submission_id or details.job_id or "",
            cluster_name=self.cluster_name,
            state=JobState(str(details.status.value if hasattr(details.status, "value") else details.status)),
            entrypoint=details.entrypoint,
            message=details.message,
            error_type=details.error_type,
            metadata=dict(details.metadata or {}),
            start_time=_millis(details.start_time),
            end_time=_millis(details.end_time),
        )

    def describe(self, submission_id: str) -> JobInfo | None:
        try:
            return self._info(self._client.get_job_info(submission_id))
        except RuntimeError as error:
            if _NOT_FOUND.search(str(error)):
                return None
            raise BackendError(f"Ray Jobs API of {self.cluster_name!r}: {error}") from None

    def submit(self, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        """Submit under ``submission_id``; if a job of that id exists, return it instead."""
        existing = self.describe(submission_id)
        if existing is not None:
            return existing
        try:
            self._client.submit_job(
                entrypoint=job.entrypoint,
                submission_id=submission_id,
                runtime_env=job.runtime_env.to_ray() or None,
                metadata={**job.metadata, **metadata},
                entrypoint_num_cpus=job.entrypoint_num_cpus,
                entrypoint_num_gpus=job.entrypoint_num_gpus,
                entrypoint_memory=job.entrypoint_memory,
                entrypoint_resources=job.entrypoint_resources or None,
            )
        except RuntimeError as error:
            # Another worker submitted the same id between our look and our submit: same job.
            if not _ALREADY_EXISTS.search(str(error)):
                raise BackendError(f"Ray rejected job {submission_id!r}: {error}") from None
        info = self.describe(submission_id)
        if info is None:
            raise BackendError(f"job {submission_id!r} vanished right after submission")
        return info

    def list(self) -> list[JobInfo]:
        try:
            return [self._info(details) for details in self._client.list_jobs()]
        except RuntimeError as error:
            raise BackendError(f"Ray Jobs API of {self.cluster_name!r}: {error}") from None

    def logs(self, submission_id: str) -> str:
        try:
            return self._client.get_job_logs(submission_id)
        except RuntimeError as error:
            raise BackendError(f"logs of job {submission_id!r}: {error}") from None

    def stop(self, submission_id: str) -> bool:
        try:
            return bool(self._client.stop_job(submission_id))
        except RuntimeError as error:
            if _NOT_FOUND.search(str(error)):
                return False
            raise BackendError(f"stopping job {submission_id!r}: {error}") from None
