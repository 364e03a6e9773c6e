"""A RayJob's driver log read once, as it is written: one followed read of its submitter pod's log.

Kubernetes serves a pod's log whole or from a time, never from a byte offset. Read whole on every
poll, a running job's log costs its size again each time (the square of its duration), and as many
times more as there are waits on it in one process. A :class:`FollowedLog` opens the submitter's log
once with ``follow=true`` and receives each byte as the container writes it, in a thread of its own;
every reader of that job in this process (triggers on one triggerer, a blocking wait) reads from its
own offset in what was received. The follow ends with the container (the log is then whole) or with a
dropped connection; a reader that still wants more after a drop opens it again, at most every
``REOPEN_SECONDS``. Logs nobody has read for ``FORGET_SECONDS`` after their end are forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from airflow_ray_platform.backends.base import LOG_CHUNK_BYTES

#: The soonest a reader may open a log again after its follow ended (or found no pod yet).
REOPEN_SECONDS = 2.0
#: How long after a follow ran to its end a job that still runs means the server cut the follow.
CUT_FOLLOW_SECONDS = 10.0
#: How long an ended log is kept for readers after the last read.
FORGET_SECONDS = 300.0
#: How long a final read (the job is over) waits for the container's last bytes.
FINAL_READ_SECONDS = 5.0


class FollowedLog:
    """One pod log, received in a thread by one followed read (``open_follow`` returns the streaming
    response, None when there is no pod yet)."""

    def __init__(self, open_follow: Callable[[], Any]) -> None:
        self._open_follow = open_follow
        self._data = bytearray()
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self._ended = threading.Event()
        self._ended.set()
        self.opened_at = float("-inf")
        #: The follow ran to its end: the container exited and the log is whole.
        self.complete = False
        self.completed_at = float("-inf")
        self.read_at = time.monotonic()
        #: Bytes received (skipped ones included): what a benchmark counts.
        self.received = 0

    def _follow(self, skip: int) -> None:
        """Receive the log, skipping the ``skip`` bytes an earlier follow already received."""
        try:
            response = self._open_follow()
            if response is None:
                return
            try:
                for chunk in response.stream(LOG_CHUNK_BYTES, decode_content=True):
                    self.received += len(chunk)
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    with self._lock:
                        self._data += chunk
                self.complete = True  # the server ended the follow: normally, the container has exited
                self.completed_at = time.monotonic()
            finally:
                response.release_conn()
        except Exception:  # a dropped follow is opened again by the next reader
            pass
        finally:
            self._ended.set()

    def _reopen_if_due(self, *, job_running: bool) -> None:
        """Follow again if the last follow ended (and, while the job runs, REOPEN_SECONDS passed): if it
        never ran to its end, or if it did but the job still runs CUT_FOLLOW_SECONDS later (the server cut
        a long follow; a container's exit is followed by the job's end within moments)."""
        with self._opening:  # readers in several threads: one opens
            self._reopen_locked(job_running)

    def _reopen_locked(self, job_running: bool) -> None:
        now = time.monotonic()
        cut = job_running and self.complete and now - self.completed_at >= CUT_FOLLOW_SECONDS
        due = not job_running or now - self.opened_at >= REOPEN_SECONDS  # a final read never waits for it
        if (cut or not self.complete) and self._ended.is_set() and due:
            self.complete = False
            self.opened_at = now
            self._ended.clear()
            with self._lock:
                skip = len(self._data)
            threading.Thread(target=self._follow, args=(skip,), name="ray-job-log-follow", daemon=True).start()

    def since(self, offset: int, *, complete_lines: bool) -> tuple[str, int]:
        """(text after byte ``offset``, the offset after it): whole lines, or everything once the job is
        over (``complete_lines`` False), after waiting up to FINAL_READ_SECONDS for the container's end."""
        self.read_at = time.monotonic()
        self._reopen_if_due(job_running=complete_lines)
        if not complete_lines:
            self._ended.wait(FINAL_READ_SECONDS)
        with self._lock:
            data = bytes(self._data[offset:])
        if complete_lines:
            data = data[: data.rfind(b"\n") + 1]
        return data.decode(errors="replace"), offset + len(data)


class FollowedLogs:
    """Every followed log of this process, by (Kubernetes connection, namespace, submission id)."""

    _logs: ClassVar[dict[tuple[str, str, str], FollowedLog]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def get(cls, key: tuple[str, str, str], open_follow: Callable[[], Any]) -> FollowedLog:
        """The log of ``key``, made on first use; logs not followed and unread for FORGET_SECONDS are dropped."""
        now = time.monotonic()
        with cls._lock:
            for stale in [
                k for k, log in cls._logs.items() if log._ended.is_set() and now - log.read_at > FORGET_SECONDS
            ]:
                del cls._logs[stale]
            if key not in cls._logs:
                cls._logs[key] = FollowedLog(open_follow)
            return cls._logs[key]
