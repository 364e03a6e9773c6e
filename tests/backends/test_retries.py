"""The retry policies' boundaries: what each retries, and that it gives up with the original error."""

from __future__ import annotations

import logging

import pytest

from airflow_ray_platform.backends.retries import CLIENT_SERVER_DIED, MAX_CLIENT_CONNECTS, client_connect

log = logging.getLogger(__name__)


def _connect_failing(times: int, error: Exception):
    calls = []

    def connect(address: str) -> str:
        calls.append(address)
        if len(calls) <= times:
            raise error
        return f"connected to {address}"

    return connect, calls


def test_a_client_server_that_died_at_start_is_connected_again(caplog):
    died = ConnectionAbortedError(f"{CLIENT_SERVER_DIED}:\npsutil.ZombieProcess: PID still exists (pid=8179)")
    connect, calls = _connect_failing(1, died)
    with caplog.at_level(logging.WARNING):
        assert client_connect(log)(connect, "ray://127.0.0.1:1") == "connected to ray://127.0.0.1:1"
    assert calls == ["ray://127.0.0.1:1"] * 2
    assert "died at start (1/3)" in caplog.text


def test_a_server_that_keeps_dying_fails_with_rays_own_error():
    died = ConnectionAbortedError(f"{CLIENT_SERVER_DIED}:\nboom")
    connect, calls = _connect_failing(MAX_CLIENT_CONNECTS, died)
    with pytest.raises(ConnectionAbortedError, match="boom"):
        client_connect(log)(connect, "ray://127.0.0.1:1")
    assert len(calls) == MAX_CLIENT_CONNECTS


@pytest.mark.parametrize(
    "error", [ConnectionAbortedError("Authentication failed"), ConnectionError(CLIENT_SERVER_DIED)]
)
def test_any_other_connection_error_is_not_retried(error):
    connect, calls = _connect_failing(1, error)
    with pytest.raises(type(error)):
        client_connect(log)(connect, "ray://127.0.0.1:1")
    assert len(calls) == 1
