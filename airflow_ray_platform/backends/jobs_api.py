"""Ray jobs through the Ray Jobs API (the dashboard), on Ray's own ``JobSubmissionClient``.

Any backend whose cluster exposes a reachable dashboard uses this for the job half of the backend
interface. The bearer token goes into the client's headers only: it is never logged, and errors
raised from here never repeat request headers.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import io
import ipaddress
import queue
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import requests

from airflow_ray_platform.backends.base import (
    LOG_CHUNK_BYTES,
    BackendAuthenticationError,
    BackendError,
    JobInfo,
    JobState,
)
from airflow_ray_platform.backends.followed_logs import FollowedLogs
from airflow_ray_platform.spec.models import JobSpec

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

_NOT_FOUND = re.compile(r"status code 404")
#: The runtime_env fields Ray's client sends as they are (nothing to upload, nothing to rewrite): a job
#: with only these is posted to the Jobs REST API directly.
_POSTED_AS_IS = frozenset({"env_vars"})
_ALREADY_EXISTS = re.compile(r"already exists")
T = TypeVar("T")


def _millis(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, tz=UTC) if value else None


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


def _raise_unless_ok(response: requests.Response, doing: str) -> None:
    """A REST call's refusal as BackendError, with Ray's own reason (``already exists`` and the like)."""
    if response.status_code != 200:
        raise BackendError(f"{doing}: status code {response.status_code}: {response.text[:2000]}")


#: Ray's ``JOB_LOGS_PATH_TEMPLATE``: the file a job's driver log has on its node. Spelled out rather than
#: imported because importing it imports Ray (0.6 s at the end of every ``airflow-ray submit``); a test
#: holds it to Ray's own.
DRIVER_LOG_TEMPLATE = "job-driver-{submission_id}.log"


def driver_log_name(submission_id: str) -> str:
    """The file a job's driver log has on its node, as Ray names it."""
    return DRIVER_LOG_TEMPLATE.format(submission_id=submission_id)


class JobsApiClient:
    """One cluster's Jobs API: idempotent submit, describe, list, logs, stop.

    Every failure comes out as :class:`BackendError` carrying Ray's reason (authentication, an
    unreachable dashboard, a rejected submission); a missing job is ``None`` / ``False``.
    """

    def __init__(self, cluster_name: str, address: str, token: str | None, verify: bool | str = True) -> None:
        self.cluster_name = cluster_name
        self.address = address
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify

    @functools.cached_property
    def _client(self) -> JobSubmissionClient:
        """Ray's client, for what changes a job or streams its log; made (and imported: about a second)
        on first use, so that a look at jobs through the REST API below costs neither."""
        from ray.job_submission import JobSubmissionClient

        return self._call(
            f"reaching the Ray Jobs API of cluster {self.cluster_name!r}",
            JobSubmissionClient,
            self.address,
            headers=self._headers or None,
            verify=self._verify,
        )

    @staticmethod
    def _call(doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from ray.exceptions import AuthenticationError, RayError

        try:
            return function(*args, **kwargs)
        except AuthenticationError as error:
            raise BackendAuthenticationError(f"{doing}: {error}") from None
        except (RuntimeError, ConnectionError, RayError, requests.RequestException) as error:
            raise BackendError(f"{doing}: {error}") from None

    def _request(
        self, method: str, path: str, doing: str, read_timeout: float = 30, **kwargs: Any
    ) -> requests.Response:
        """``method`` ``path`` of the dashboard's documented REST API (Jobs, State, logs) with this client's
        token; refused credentials raise BackendAuthenticationError, an unreachable dashboard BackendError."""
        try:
            response = requests.request(
                method,
                f"{self.address}{path}",
                headers=self._headers,
                verify=self._verify,
                timeout=(10, read_timeout),
                **kwargs,
            )
        except requests.RequestException as error:
            raise BackendError(f"{doing}: {error}") from None
        if response.status_code in (401, 403):
            reason = " ".join(response.text.split())[:300]  # Ray's reason; it never repeats the token sent
            response.close()
            raise BackendAuthenticationError(
                f"{doing}: the cluster refused the token ({response.status_code}: {reason or 'no reason given'})"
            )
        return response

    def _get(self, path: str, doing: str, *, stream: bool = False, read_timeout: float = 30) -> requests.Response:
        return self._request("GET", path, doing, read_timeout, stream=stream)

    def _details(self, submission_id: str) -> dict[str, Any] | None:
        """The job as the Jobs REST API describes it (``GET /api/jobs/<id>``); None if the cluster has none."""
        doing = f"describing job {submission_id!r}"
        response = self._get(f"/api/jobs/{urllib.parse.quote(submission_id, safe='')}", doing)
        if response.status_code == 404:
            return None
        _raise_unless_ok(response, doing)
        return response.json()

    def _info(self, details: Mapping[str, Any]) -> JobInfo:
        return JobInfo(
            submission_id=details.get("submission_id") or details.get("job_id") or "",
            cluster_name=self.cluster_name,
            state=JobState(str(details["status"])),
            entrypoint=details.get("entrypoint") or "",
            message=details.get("message"),
            error_type=details.get("error_type"),
            metadata=dict(details.get("metadata") or {}),
            start_time=_millis(details.get("start_time")),
            end_time=_millis(details.get("end_time")),
        )

    def describe(self, submission_id: str) -> JobInfo | None:
        details = self._details(submission_id)
        return None if details is None else self._info(details)

    def submit(self, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        """Submit under ``submission_id``; if a job of that id exists, return it instead."""
        existing = self.describe(submission_id)
        if existing is not None:
            return existing
        doing = f"submitting job {submission_id!r} to cluster {self.cluster_name!r}"
        fields = job.submission(metadata)
        try:
            if set(fields.get("runtime_env") or {}) <= _POSTED_AS_IS:
                self._post_job(doing, {"submission_id": submission_id, **fields})
            else:  # Ray's client uploads a local working_dir and py_modules, and checks the runtime_env
                self._call(doing, self._client.submit_job, submission_id=submission_id, **fields)
        except BackendError as error:
            # Another worker submitted the same id between our look and our submit: same job.
            if not _ALREADY_EXISTS.search(str(error)):
                raise
        info = self.describe(submission_id)
        if info is None:
            raise BackendError(f"job {submission_id!r} vanished right after submission")
        return info

    def _post_job(self, doing: str, body: dict[str, Any]) -> None:
        """``POST /api/jobs/`` of the Jobs REST API, the request Ray's client sends for a job with nothing
        to upload; without importing Ray's client (about a second, what a quick ``airflow-ray submit`` is)."""
        response = self._request("POST", "/api/jobs/", doing, 60, json=body)
        _raise_unless_ok(response, doing)

    def list(self) -> list[JobInfo]:
        doing = f"listing jobs of cluster {self.cluster_name!r}"
        response = self._get("/api/jobs/", doing)
        _raise_unless_ok(response, doing)
        return [self._info(details) for details in response.json()]

    def head_started_at(self) -> datetime | None:
        """When the cluster's head node started (Ray's State API), None where it does not say: the
        cluster's own creation time when the platform did not create it (it names that incarnation)."""
        query = urllib.parse.urlencode(
            {"detail": "true", "filter_keys": "is_head_node", "filter_predicates": "=", "filter_values": "True"}
        )
        response = self._get(f"/api/v0/nodes?{query}", f"reading the head node of cluster {self.cluster_name!r}")
        if response.status_code != 200:
            return None
        nodes = ((response.json().get("data") or {}).get("result") or {}).get("result") or []
        started = [node["start_time_ms"] for node in nodes if node.get("is_head_node") and node.get("start_time_ms")]
        return _millis(min(started)) if started else None

    def logs(self, submission_id: str) -> str:
        return self._call(f"reading logs of job {submission_id!r}", self._client.get_job_logs, submission_id)

    def log_chunks(self, submission_id: str) -> Iterator[bytes]:
        """A finished job's driver log, chunk by chunk, as the file holds it (never whole in memory, unless
        this process follows the job's log: then the read also completes that, so that its readers' last
        read need not wait 2 to 3 s for Ray's log tail to close; :meth:`FollowedLog.complete_with`)."""
        followed = FollowedLogs.find(self._followed_key(submission_id))
        if followed is None or followed.complete:
            yield from self._file_chunks(submission_id)
            return
        # The tail sends the file as Ray reads it in text mode: UTF-8, every \r\n and \r a \n.
        as_tail_sends = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")("replace"), translate=True)
        whole = bytearray()
        for chunk in self._file_chunks(submission_id):
            whole += as_tail_sends.decode(chunk).encode()
            yield chunk
        whole += as_tail_sends.decode(b"", final=True).encode()
        followed.complete_with(whole)

    def _file_chunks(self, submission_id: str) -> Iterator[bytes]:
        """From Ray's log-file endpoint (the State API's ``/api/v0/logs/file``, HTTP streamed, ending at the
        file's end); Ray's websocket log tail, the fallback where that endpoint does not serve the job,
        closes only seconds after a finished job's end."""
        node_id = (self._details(submission_id) or {}).get("driver_node_id")
        if not node_id:  # never started a driver: nothing on any node to read
            yield from self.tail(submission_id)
            return
        query = urllib.parse.urlencode({"node_id": node_id, "filename": driver_log_name(submission_id), "lines": -1})
        doing = f"reading logs of job {submission_id!r}"
        with self._get(f"/api/v0/logs/file?{query}", doing, stream=True, read_timeout=300) as response:
            if response.status_code == 200:
                try:
                    yield from response.iter_content(chunk_size=LOG_CHUNK_BYTES)
                except requests.RequestException as error:
                    raise BackendError(f"{doing}: {error}") from None
                return
        yield from self.tail(submission_id)

    def log_since(self, submission_id: str, offset: int, *, complete_lines: bool) -> tuple[str, int]:
        """The driver log after byte ``offset``, from one :meth:`tail` of it followed for every reader in
        this process (:class:`FollowedLog`): each byte fetched once while the job runs."""
        followed = FollowedLogs.get(self._followed_key(submission_id), lambda: self.tail(submission_id))
        text, after = followed.since(offset, complete_lines=complete_lines)
        if not complete_lines and not followed.complete and followed.received == 0:
            # The tail never opened (a proxy in front of the dashboard that does not pass websockets):
            # the job is over, so its log is read whole, once, rather than lost from the task's log.
            data = self.logs(submission_id).encode()[offset:]
            return data.decode(errors="replace"), offset + len(data)
        return text, after

    def _followed_key(self, submission_id: str) -> tuple[str, ...]:
        return ("jobs-api", self.address, submission_id)

    def tail(self, submission_id: str) -> Iterator[bytes]:
        """The driver log from its first byte as Ray's log tail (a websocket) sends it, ending once the job
        is over and its log read to the end. It runs on an event loop of its own in a helper thread,
        handing chunks over through a small bounded queue (the consumer sets the pace)."""
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
