"""A real OTLP/HTTP metrics receiver on 127.0.0.1: what Airflow's OpenTelemetry exporter posts to
``/v1/metrics``, decoded with OpenTelemetry's own protobuf messages, as a collector would."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


@dataclass(frozen=True)
class DataPoint:
    name: str
    kind: str  # sum, gauge, histogram, exponential_histogram
    attributes: dict[str, str] = field(default_factory=dict)


def _attributes(point: Any) -> dict[str, str]:
    return {item.key: item.value.string_value for item in point.attributes}


class OtlpReceiver:
    """Collects every metric data point posted to it, until closed."""

    def __init__(self) -> None:
        received: list[DataPoint] = []
        self.points = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_metrics:
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            kind = metric.WhichOneof("data")
                            for point in getattr(metric, kind).data_points:
                                received.append(DataPoint(metric.name, kind, _attributes(point)))
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    @property
    def airflow_environment(self) -> dict[str, str]:
        """Airflow's configuration that exports its metrics (and the provider's) here every half second."""
        return {
            "AIRFLOW__METRICS__OTEL_ON": "True",
            "AIRFLOW__METRICS__OTEL_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__OTEL_PORT": str(self.port),
            "AIRFLOW__METRICS__OTEL_INTERVAL_MILLISECONDS": "500",
            "AIRFLOW__METRICS__STATSD_ON": "False",
        }

    def provider_points(self, name: str) -> list[DataPoint]:
        return [point for point in list(self.points) if point.name == f"airflow.ray_platform.{name}"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
