"""Every retry of the platform, as tenacity policies built in this one place.

Two kinds of failure are retried, each by one policy:

- a status call that fails while a task waits for its job (a dashboard restarting, an API server's
  hiccup): :func:`transient_faults` tolerates :data:`MAX_CONSECUTIVE_ERRORS` in a row, one poll interval
  apart, the same in the blocking wait and in the trigger (:func:`async_transient_faults`), so a
  dashboard restart fails neither;
- a write that lost an optimistic-concurrency race (a Kubernetes ``409``, a cluster deleted while it was
  being leased): :func:`on_conflict` reads again and retries at once, :data:`MAX_CONFLICTS` times.

A third, :func:`client_connect`, retries Ray's own client when the cluster's per-client server died
while it started (a Ray race, ray-project/ray#63202); each attempt starts a new server.

A policy re-raises the last error when it gives up, so the caller reports the backend's own reason.
"""

from __future__ import annotations

import logging

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from airflow_ray_platform.backends.base import BackendError

#: Consecutive failed status calls a wait tolerates before it gives up.
MAX_CONSECUTIVE_ERRORS = 5
#: Writes retried after a concurrent one changed the object first.
MAX_CONFLICTS = 5
#: Attempts at connecting Ray's client while the cluster's per-client server keeps dying at start.
MAX_CLIENT_CONNECTS = 3
#: What Ray's client raises when the server it was given died before answering.
CLIENT_SERVER_DIED = "Initialization failure from server"


class ConcurrentChange(BackendError):
    """Another writer changed the object between this one's read and its write: read again, retry."""


def _transient_args(interval: float, log: logging.Logger) -> dict:
    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("Ray status call failed (%d/%d): %s", state.attempt_number, MAX_CONSECUTIVE_ERRORS, error)

    return {
        "retry": retry_if_exception_type(BackendError),
        "stop": stop_after_attempt(MAX_CONSECUTIVE_ERRORS),
        "wait": wait_fixed(interval),
        "before_sleep": warn,
        "reraise": True,
    }


def transient_faults(interval: float, log: logging.Logger) -> Retrying:
    """A blocking wait's status call, retried on :class:`BackendError` (each call starts a fresh count)."""
    return Retrying(**_transient_args(interval, log))


def async_transient_faults(interval: float, log: logging.Logger) -> AsyncRetrying:
    """The same policy for a trigger's coroutine (its sleeps never block the event loop)."""
    return AsyncRetrying(**_transient_args(interval, log))


def on_conflict() -> Retrying:
    """A read-modify-write retried when a concurrent writer won (:class:`ConcurrentChange`)."""
    return Retrying(
        retry=retry_if_exception_type(ConcurrentChange), stop=stop_after_attempt(MAX_CONFLICTS), reraise=True
    )


def _client_server_died(error: BaseException) -> bool:
    return isinstance(error, ConnectionAbortedError) and CLIENT_SERVER_DIED in str(error)


def client_connect(log: logging.Logger) -> Retrying:
    """``ray.init`` through Ray's client, retried when the server started for it died while starting.

    Ray's client proxy forks a server per client while its gRPC poller runs, and the child can die at
    start (ray-project/ray#63202, open): the connection fails with :data:`CLIENT_SERVER_DIED`. Ray's
    client disconnects on that failure, so a new attempt starts a new server.
    """

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "Ray's client server died at start (%d/%d), connecting again: %s",
            state.attempt_number,
            MAX_CLIENT_CONNECTS,
            str(error).splitlines()[0],
        )

    return Retrying(
        retry=retry_if_exception(_client_server_died),
        stop=stop_after_attempt(MAX_CLIENT_CONNECTS),
        wait=wait_fixed(1.0),
        before_sleep=warn,
        reraise=True,
    )
