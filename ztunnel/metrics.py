"""Prometheus metrics with Istio's names and labels, and one access-log line per connection."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

access_log = logging.getLogger("trellis.ztunnel.access")

LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
          "destination_workload", "destination_workload_namespace", "destination_principal",
          "destination_service", "connection_security_policy")


@dataclass(frozen=True)
class ConnLabels:
    reporter: str  # "source" (outbound side) | "destination" (inbound side)
    source_workload: str = "unknown"
    source_workload_namespace: str = "unknown"
    source_principal: str = "unknown"
    destination_workload: str = "unknown"
    destination_workload_namespace: str = "unknown"
    destination_principal: str = "unknown"
    destination_service: str = "unknown"
    connection_security_policy: str = "unknown"  # "mutual_tls" over HBONE


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened", LABELS, registry=r)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed", LABELS, registry=r)
        # Istio's meaning at both reporters: received = request bytes (client to server),
        # sent = response bytes (server to client).
        self.sent = Counter("istio_tcp_sent_bytes", "Response bytes (server to client)", LABELS, registry=r)
        self.received = Counter("istio_tcp_received_bytes", "Request bytes (client to server)", LABELS, registry=r)
        self.cp_connected = Gauge("trellis_control_plane_connected", "1 when the control-plane watch is up", registry=r)
        self.config_version = Gauge("trellis_config_version", "Version of the applied snapshot", registry=r)
        # HBONE server refusals (meshcore.hbone.limits): connections closed with
        # GOAWAY(ENHANCE_YOUR_CALM) by limit, and tunnels the client reset before an answer.
        self.hbone_limit_refusals = Counter("trellis_hbone_limit_refusals", "HBONE connections closed for "
                                            "exceeding an HTTP/2 limit", ["limit"], registry=r)
        self.hbone_early_resets = Counter("trellis_hbone_tunnels_reset_early", "HBONE tunnels the client "
                                          "reset before they were answered (the app was not dialled)", registry=r)
        self.cp_last_contact = Gauge("trellis_control_plane_last_contact_seconds",
                                     "Unix time of the last message from the control plane", registry=r)

    def connection_opened(self, labels: ConnLabels) -> None:
        self.opened.labels(**asdict(labels)).inc()

    def connection_closed(self, labels: ConnLabels, request_bytes: int, response_bytes: int) -> None:
        values = asdict(labels)
        self.closed.labels(**values).inc()
        self.received.labels(**values).inc(request_bytes)
        self.sent.labels(**values).inc(response_bytes)

    def hbone_event(self, name: str, _peer: str) -> None:
        """`meshcore.hbone.ServerStats.on_event`: the refusals become metrics."""
        if name.startswith("limit_exceeded:"):
            self.hbone_limit_refusals.labels(limit=name.partition(":")[2]).inc()
        elif name == "tunnels_reset_early":
            self.hbone_early_resets.inc()

    def value(self, name: str, **labels: str) -> float:
        """Sum of a sample over series matching `labels` (for tests and the CLI)."""
        total = 0.0
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def render(self) -> bytes:
        return generate_latest(self.registry)


def log_connection(*, direction: str, src: str, dst: str, labels: ConnLabels, sent: int, received: int,
                   started: float, outcome: str, error: str | None = None, **extra: object) -> dict:
    """Emit one structured access-log line and return it."""
    entry = {"direction": direction, "src": src, "dst": dst,
             "src.identity": labels.source_principal, "dst.identity": labels.destination_principal,
             "dst.service": labels.destination_service, "bytes_sent": sent, "bytes_received": received,
             "duration_ms": round((time.monotonic() - started) * 1000, 1), "outcome": outcome}
    if error:
        entry["error"] = error
    entry.update(extra)
    access_log.info(json.dumps(entry, sort_keys=True))
    return entry
