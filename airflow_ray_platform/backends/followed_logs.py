"""A running job's driver log read once, as it is written: one followed read shared by every reader.

A log read whole on every poll costs its size again each time (the square of its duration), and as many
times more as there are waits on it in one process. A :class:`FollowedLog` opens one follow of the log,
which sends every byte from the first as it is written and ends once the log is whole, and receives it in
a thread of its own; every reader of that job in this process (triggers on one triggerer, a blocking
wait) reads from its own offset in what was received. Two follows serve it:

* KubeRay: the RayJob's submitter pod log (``follow=true``), which ends with the container;
* a Ray dashboard (the dashboard backend, KubeRay with ``dashboard_url_template``): the Jobs API's log
  tail, which ends once the job is over and its log read to the end. Ray's log HTTP API has no byte
  offset, and its followed stream never ends by itself, so it could not say when the log is whole.

A follow that ends before that (a dropped connection, a server's limit) is opened again by a reader
that still wants more, at most every ``REOPEN_SECONDS``, skipping what was received already. Logs
nobody has read for ``FORGET_SECONDS`` after their end are forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

#: The soonest a reader may open a log again after its follow ended (or found no pod yet).
REOPEN_SECONDS = 2.0
#: How long after a follow ran to its end a job that still runs means the server cut the follow.
CUT_FOLLOW_SECONDS = 10.0
#: How long an ended log is kept for readers after the last read.
FORGET_SECONDS = 300.0
#: How long a final read (the job is over) waits for the follow to end with the log's last bytes.
FINAL_READ_SECONDS = 5.0

#: Opens a follow: the log's chunks from its first byte as they are written (None: no log to follow yet).
OpenFollow = Callable[[], Iterator[bytes] | None]


class FollowedLog:
    """One job's log, received in a thread by one follow at a time."""

    def __init__(self, open_follow: OpenFollow) -> None:
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
        #: Bytes received (skipped ones included) and follows opened: what tests and benchmarks count.
        self.received = 0
        self.follows = 0

    def _follow(self, skip: int) -> None:
        """Receive the log, skipping the ``skip`` bytes an earlier follow already received."""
        try:
            chunks = self._open_follow()
            if chunks is None:
                return
            for chunk in chunks:
                self.received += len(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                with self._lock:
                    self._data += chunk
            self.complete = True  # the follow ran to its end: normally, the log is whole
            self.completed_at = time.monotonic()
        except Exception:  # a dropped follow is opened again by the next reader
            pass
        finally:
            self._ended.set()

    def _reopen_if_due(self, *, job_running: bool) -> None:
        """Follow again if the last follow ended (and, while the job runs, REOPEN_SECONDS passed): if it
        never ran to its end, or if it did but the job still runs CUT_FOLLOW_SECONDS later (the server cut
        a long follow; a log is whole within moments of the job's end)."""
        with self._opening:  # readers in several threads: one opens
            self._reopen_locked(job_running)

    def _reopen_locked(self, job_running: bool) -> None:
        now = time.monotonic()
        cut = job_running and self.complete and now - self.completed_at >= CUT_FOLLOW_SECONDS
        due = not job_running or now - self.opened_at >= REOPEN_SECONDS  # a final read never waits for it
        if (cut or not self.complete) and self._ended.is_set() and due:
            self.complete = False
            self.opened_at = now
            self.follows += 1
            self._ended.clear()
            with self._lock:
                skip = len(self._data)
            threading.Thread(target=self._follow, args=(skip,), name="ray-job-log-follow", daemon=True).start()

    def since(self, offset: int, *, complete_lines: bool) -> tuple[str, int]:
        """(text after byte ``offset``, the offset after it): whole lines, or everything once the job is
        over (``complete_lines`` False), after waiting up to FINAL_READ_SECONDS for the follow's end."""
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
    """Every followed log of this process, by where it is read from and the job's submission id (last)."""

    _logs: ClassVar[dict[tuple[str, ...], FollowedLog]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def get(cls, key: tuple[str, ...], open_follow: OpenFollow) -> FollowedLog:
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
