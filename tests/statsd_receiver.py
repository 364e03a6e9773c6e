"""A real StatsD receiver on a UDP socket of 127.0.0.1, for what Airflow's StatsD client sends.

It decodes the wire format Airflow sends with ``statsd_influxdb_enabled`` (``name,tag=value:1|c``,
several lines to a datagram), as a Prometheus ``statsd_exporter`` would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Airflow's default ``[metrics] statsd_prefix``: the deployment files in ``deploy/`` assume it too.
STATSD_PREFIX = "airflow"


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    kind: str  # c, ms, g
    tags: dict[str, str] = field(default_factory=dict)


def parse_line(line: str) -> Sample:
    """``name[,tag=value...]:value|type[|@rate]`` as Airflow's StatsD client writes it."""
    head, _, rest = line.rpartition(":")
    name, *tags = head.split(",")
    value, kind, *_ = rest.split("|")
    return Sample(name, float(value), kind, dict(tag.split("=", 1) for tag in tags))


class StatsdReceiver:
    """Collects every sample sent to it, from any process, until closed."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.samples: list[Sample] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-receiver", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                datagram = self.socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in datagram.decode().splitlines():
                if line:
                    self.samples.append(parse_line(line))

    @property
    def airflow_environment(self) -> dict[str, str]:
        """Airflow's configuration that sends its metrics (and the provider's) here, with tags."""
        return {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(self.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": STATSD_PREFIX,
            "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
        }

    def provider_samples(self, name: str | None = None) -> list[Sample]:
        """The provider's samples (``ray_platform.`` under Airflow's prefix), of ``name`` if given."""
        prefix = f"{STATSD_PREFIX}.ray_platform."
        return [
            sample
            for sample in list(self.samples)
            if sample.name.startswith(prefix) and (name is None or sample.name == prefix + name)
        ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()

    def close(self) -> None:
        self._closed.set()
        self.socket.close()
        self._thread.join(timeout=2)
