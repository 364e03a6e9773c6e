"""How a Ray job hands a value back to its Airflow task: one marked line on the driver's stdout.

The job prints ``RESULT_MARKER`` followed by the value as JSON, on a line of its own::

    print("airflow-ray-result:" + json.dumps(value), flush=True)

or, where this package is installed next to the job, ``hand_back(value)``. The task finds the line in the
driver log it reads anyway (the Jobs API's, or the RayJob submitter pod's), so the channel is the same on
the local, dashboard and KubeRay backends and needs no file, path or port: Airflow never reads anything
a job points it at. The last such line wins; a line printed by a Ray task or actor reaches the driver log
prefixed with its process (``(pid=…)``), so only the driver itself can hand a value back.

The task reads the log while it streams it to storage, so finding the result costs no second read; only
a marked line is held in memory, and no more of it than the size limit. A value is refused, with the
reason, when it is over the limit, is not JSON, or carries a credential the task authenticates to the
cluster with: a job that can read its cluster's token cannot publish it through XCom.

Stdlib only: a job's driver imports this without Airflow.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: The start of the line that carries a job's result.
RESULT_MARKER = "airflow-ray-result:"
#: The largest result (its JSON text, in bytes) a job may hand back: XCom and the job record keep it.
RESULT_LIMIT_BYTES = 1024 * 1024


class ResultTooLargeError(ValueError):
    """A job's result is over :data:`RESULT_LIMIT_BYTES`."""


def too_large(size: int) -> str:
    return (
        f"the job's result is {size} bytes of JSON, over the limit of {RESULT_LIMIT_BYTES} bytes: write large "
        "data to storage and hand back its location"
    )


def result_line(value: Any) -> str:
    """The line that hands ``value`` back (raises if it is not JSON or over the limit)."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    size = len(text.encode())
    if size > RESULT_LIMIT_BYTES:
        raise ResultTooLargeError(too_large(size))
    return RESULT_MARKER + text


def hand_back(value: Any) -> None:
    """Hand ``value`` (JSON: dicts, lists, strings, numbers, booleans, None) back to the Airflow task that
    runs this job: ``RayJobOperator`` pushes it to XCom as ``return_value``. Call it from the driver."""
    print(result_line(value), file=sys.stdout, flush=True)


_MARKER = RESULT_MARKER.encode()
_LONGEST_LINE = len(_MARKER) + RESULT_LIMIT_BYTES + 1  # the line's own "\r" included


@dataclass(frozen=True)
class JobResult:
    """What a finished job handed back: a ``value`` (when ``present``), or why one was ``refused``."""

    value: Any = None
    present: bool = False
    refused: str | None = None

    def to_dict(self) -> dict[str, Any] | None:
        """As the job's record and a trigger's event keep it (None: nothing handed back)."""
        if self.refused is not None:
            return {"refused": self.refused}
        return {"value": self.value} if self.present else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> JobResult:
        if not data:
            return cls()
        if "refused" in data:
            return cls(refused=str(data["refused"]))
        return cls(data["value"], present=True)


class ResultScanner:
    """Finds the last result line of a driver log fed in chunks, holding no more than one capped line.

    :param credentials: the secrets a result must not contain (the token this process presents to the
        cluster), asked for only once a result line was found: a job that hands nothing back costs no call.
    """

    def __init__(self, credentials: Callable[[], Collection[str | None]] = tuple) -> None:
        self._credentials = credentials
        self._line = bytearray()
        self._length = 0
        self._skipping = False
        self._found: bytes | None = None
        self._found_length = 0
        self.complete = False

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` passed on unchanged, each scanned on its way (e.g. to storage); complete once exhausted."""
        for chunk in chunks:
            self.feed(chunk)
            yield chunk
        self.end()

    def scan(self, chunks: Iterable[bytes]) -> JobResult:
        for _ in self.through(chunks):
            pass
        return self.result

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            self._take(chunk[start:] if end < 0 else chunk[start:end])
            if end < 0:
                return
            self._line_ended()
            start = end + 1

    def end(self) -> None:
        """The log is over: its last line counts even without a newline."""
        self._line_ended()
        self.complete = True

    def _take(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        self._length += len(piece)
        room = _LONGEST_LINE - len(self._line)
        if room > 0:
            self._line += piece[:room]
        head = bytes(self._line[: len(_MARKER)])
        if not (_MARKER.startswith(head) if len(head) < len(_MARKER) else head == _MARKER):
            self._skipping = True
            self._line.clear()

    def _line_ended(self) -> None:
        if not self._skipping and self._length >= len(_MARKER):
            self._found, self._found_length = bytes(self._line), self._length
        self._line.clear()
        self._length = 0
        self._skipping = False

    @property
    def result(self) -> JobResult:
        if self._found is None:
            return JobResult()
        text = self._found[len(_MARKER) :].rstrip(b"\r")
        size = self._found_length - len(_MARKER) - (len(self._found[len(_MARKER) :]) - len(text))
        if size > RESULT_LIMIT_BYTES:
            return JobResult(refused=too_large(size))
        try:
            value = json.loads(text.decode(errors="replace"))
        except ValueError as error:
            return JobResult(refused=f"the job's result line is not JSON ({error})")
        kept = json.dumps(value, ensure_ascii=False)  # as XCom would hold it, escapes undone
        if any(secret and secret in kept for secret in self._credentials()):
            return JobResult(refused="the job's result contains the cluster's authentication token: it is not kept")
        return JobResult(value, present=True)
