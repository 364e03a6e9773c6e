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

A finished job's whole log, read anyway to persist it, completes the log at once
(:meth:`FollowedLog.complete_with`): Ray's log tail only closes 2 to 3 s after the job's end (it sleeps a
second at each end of file), and every reader's last read would otherwise wait for that.
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
        #: Which follow may still add to the log: one superseded by a whole read adds nothing more.
        self._generation = 0
        self.opened_at = float("-inf")
        #: The follow ran to its end: the container exited and the log is whole.
        self.complete = False
        self.completed_at = float("-inf")
        self.read_at = time.monotonic()
        #: Bytes received (skipped ones included) and follows opened: what tests and benchmarks count.
        self.received = 0
        self.follows = 0

    def _follow(self, skip: int, generation: int) -> None:
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
                    if generation != self._generation:  # completed by a whole read meanwhile
                        return
                    self._data += chunk
            with self._lock:
                if generation == self._generation:  # the follow ran to its end: normally, the log is whole
                    self.complete = True
                    self.completed_at = time.monotonic()
        except Exception:  # a dropped follow is opened again by the next reader
            pass
        finally:
            self._ended.set()

    def complete_with(self, whole: bytearray) -> bool:
        """The finished job's whole log, as the follow would have sent it, read by someone anyway (its
        log persisted): it completes this log now, rather than when the follow closes (or extends one a
        server cut short). Refused unless it extends what the follow received, so that no reader's offset
        can point elsewhere. Returns whether the log is complete."""
        with self._lock:
            if not whole.startswith(self._data):
                return self.complete
            self._data = whole  # taken, not copied: a chatty job's log is large
            self._generation += 1  # a follow still open adds nothing more
            self.complete = True
            self.completed_at = time.monotonic()
            return True

    def wait_for_end(self, timeout: float) -> None:
        """Wait up to ``timeout`` for an open follow to end: after it, the log's source has it whole."""
        if not self.complete:
            self._ended.wait(timeout)

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
                skip, generation = len(self._data), self._generation
            threading.Thread(
                target=self._follow, args=(skip, generation), name="ray-job-log-follow", daemon=True
            ).start()

    def since(self, offset: int, *, complete_lines: bool) -> tuple[str, int]:
        """(text after byte ``offset``, the offset after it): whole lines, or everything once the job is
        over (``complete_lines`` False), after waiting up to FINAL_READ_SECONDS for the follow's end."""
        self.read_at = time.monotonic()
        self._reopen_if_due(job_running=complete_lines)
        if not complete_lines:
            self.wait_for_end(FINAL_READ_SECONDS)
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
    def find(cls, key: tuple[str, ...]) -> FollowedLog | None:
        """The log of ``key`` if a reader of this process follows it."""
        with cls._lock:
            return cls._logs.get(key)

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
