"""Ray jobs through the Ray Jobs API (the dashboard), on Ray's own ``JobSubmissionClient``.

Any backend whose cluster exposes a reachable dashboard uses this for the job half of the backend
interface. The bearer token goes into the client's headers only: it is never logged, and errors
raised from here never repeat request headers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import queue
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from ray.dashboard.modules.job.common import JOB_LOGS_PATH_TEMPLATE
from ray.exceptions import AuthenticationError, RayError
from ray.job_submission import JobDetails, JobSubmissionClient

from airflow_ray_platform.backends.base import (
    LOG_CHUNK_BYTES,
    BackendAuthenticationError,
    BackendError,
    JobInfo,
    JobState,
)
from airflow_ray_platform.spec.models import JobSpec

_NOT_FOUND = re.compile(r"status code 404")
_ALREADY_EXISTS = re.compile(r"already exists")
T = TypeVar("T")


def _millis(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, tz=UTC) if value else None


_CLIENT_ERRORS = (RuntimeError, ConnectionError, RayError, requests.RequestException)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


def require_https(address: str, allow_http: bool, what: str) -> None:
    """Refuse a Jobs API address beyond this machine that is not https: the credential sent in its header
    would cross the network in clear text (``allow_http`` accepts that, explicitly)."""
    parts = urlsplit(address)
    if parts.scheme != "https" and not allow_http and not _is_loopback(parts.hostname):
        raise BackendError(
            f"{what} {address} is not https: its credential would cross the network in clear text; use https, "
            "or set the extra allow_http: true to accept that"
        )


class JobsApiClient:
    """One cluster's Jobs API: idempotent submit, describe, list, logs, stop.

    Every failure comes out as :class:`BackendError` carrying Ray's reason (authentication, an
    unreachable dashboard, a rejected submission); a missing job is ``None`` / ``False``.
    """

    def __init__(self, cluster_name: str, address: str, token: str | None, verify: bool | str = True) -> None:
        self.cluster_name = cluster_name
        self.address = address
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._headers = dict(headers or {})
        self._verify = verify
        self._client = self._call(
            f"reaching the Ray Jobs API of cluster {cluster_name!r}",
            JobSubmissionClient,
            address,
            headers=headers,
            verify=verify,
        )

    @staticmethod
    def _call(doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except AuthenticationError as error:
            raise BackendAuthenticationError(f"{doing}: {error}") from None
        except _CLIENT_ERRORS as error:
            raise BackendError(f"{doing}: {error}") from None

    def _info(self, details: JobDetails) -> JobInfo:
        return JobInfo(
            submission_id=details.submission_id or details.job_id or "",
            cluster_name=self.cluster_name,
            state=JobState(str(getattr(details.status, "value", details.status))),
            entrypoint=details.entrypoint,
            message=details.message,
            error_type=details.error_type,
            metadata=dict(details.metadata or {}),
            start_time=_millis(details.start_time),
            end_time=_millis(details.end_time),
        )

    def describe(self, submission_id: str) -> JobInfo | None:
        try:
            details = self._call(f"describing job {submission_id!r}", self._client.get_job_info, submission_id)
        except BackendError as error:
            if _NOT_FOUND.search(str(error)):
                return None
            raise
        return self._info(details)

    def submit(self, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        """Submit under ``submission_id``; if a job of that id exists, return it instead."""
        existing = self.describe(submission_id)
        if existing is not None:
            return existing
        try:
            self._call(
                f"submitting job {submission_id!r} to cluster {self.cluster_name!r}",
                self._client.submit_job,
                submission_id=submission_id,
                **job.submission(metadata),
            )
        except BackendError as error:
            # Another worker submitted the same id between our look and our submit: same job.
            if not _ALREADY_EXISTS.search(str(error)):
                raise
        info = self.describe(submission_id)
        if info is None:
            raise BackendError(f"job {submission_id!r} vanished right after submission")
        return info

    def list(self) -> list[JobInfo]:
        jobs = self._call(f"listing jobs of cluster {self.cluster_name!r}", self._client.list_jobs)
        return [self._info(details) for details in jobs]

    def head_started_at(self) -> datetime | None:
        """When the cluster's head node started (Ray's State API), None where it does not say: the
        cluster's own creation time when the platform did not create it (it names that incarnation)."""
        query = urllib.parse.urlencode(
            {"detail": "true", "filter_keys": "is_head_node", "filter_predicates": "=", "filter_values": "True"}
        )
        doing = f"reading the head node of cluster {self.cluster_name!r}"
        try:
            response = requests.get(
                f"{self.address}/api/v0/nodes?{query}", headers=self._headers, verify=self._verify, timeout=(10, 30)
            )
        except requests.RequestException as error:
            raise BackendError(f"{doing}: {error}") from None
        if response.status_code in (401, 403):
            raise BackendAuthenticationError(f"{doing}: the cluster refused the token ({response.status_code})")
        if response.status_code != 200:
            return None
        nodes = ((response.json().get("data") or {}).get("result") or {}).get("result") or []
        started = [node["start_time_ms"] for node in nodes if node.get("is_head_node") and node.get("start_time_ms")]
        return _millis(min(started)) if started else None

    def logs(self, submission_id: str) -> str:
        return self._call(f"reading logs of job {submission_id!r}", self._client.get_job_logs, submission_id)

    def log_chunks(self, submission_id: str) -> Iterator[bytes]:
        """A finished job's driver log, chunk by chunk: never whole in memory.

        From Ray's log-file endpoint (the State API's ``/api/v0/logs/file``, HTTP streamed, ending at the
        file's end); Ray's websocket log tail, the fallback where that endpoint does not serve the job,
        only closes about 5 s after a finished job's end, and that was every deferred task's wait.
        """
        details = self._call(f"describing job {submission_id!r}", self._client.get_job_info, submission_id)
        node_id = getattr(details, "driver_node_id", None)
        if not node_id:  # never started a driver: nothing on any node to read
            yield from self._tail_chunks(submission_id)
            return
        filename = JOB_LOGS_PATH_TEMPLATE.format(submission_id=submission_id)
        query = urllib.parse.urlencode({"node_id": node_id, "filename": filename, "lines": -1})
        try:
            with requests.get(
                f"{self.address}/api/v0/logs/file?{query}",
                headers=self._headers,
                verify=self._verify,
                stream=True,
                timeout=(10, 300),
            ) as response:
                if response.status_code in (401, 403):
                    raise BackendAuthenticationError(
                        f"reading logs of job {submission_id!r}: the cluster refused the token ({response.status_code})"
                    )
                if response.status_code == 200:
                    yield from response.iter_content(chunk_size=LOG_CHUNK_BYTES)
                    return
        except requests.RequestException as error:
            raise BackendError(f"reading logs of job {submission_id!r}: {error}") from None
        yield from self._tail_chunks(submission_id)

    def _tail_chunks(self, submission_id: str) -> Iterator[bytes]:
        """The driver log as Ray's log tail (a websocket) sends it, ending once the job is terminal. It
        runs on an event loop of its own in a helper thread, handing chunks over through a small bounded
        queue (the consumer sets the pace)."""
        handover: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)

        async def tail() -> None:
            try:
                async for text in self._client.tail_job_logs(submission_id):
                    await asyncio.to_thread(handover.put, text.encode())
            except BaseException as error:  # handed to the consumer, raised there
                await asyncio.to_thread(handover.put, error)
                return
            await asyncio.to_thread(handover.put, None)

        thread = threading.Thread(target=asyncio.run, args=(tail(),), name=f"ray-log-tail-{submission_id}")
        thread.daemon = True
        thread.start()
        while (item := handover.get()) is not None:
            if isinstance(item, BaseException):
                raise BackendError(f"reading logs of job {submission_id!r}: {item}") from None
            yield item
        thread.join()

    def stop(self, submission_id: str) -> bool:
        try:
            return bool(self._call(f"stopping job {submission_id!r}", self._client.stop_job, submission_id))
        except BackendError as error:
            if _NOT_FOUND.search(str(error)):
                return False
            raise
