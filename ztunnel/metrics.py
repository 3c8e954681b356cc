"""ztunnel's Prometheus metrics, with Istio's names and labels (meshcore.telemetry)."""
from __future__ import annotations

from dataclasses import asdict

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from meshcore.telemetry import LABELS, ConnLabels, sample_total


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
        # Tunnels refused because they skipped the destination's waypoint (defense in depth).
        self.waypoint_bypass = Counter("trellis_waypoint_bypass_refused",
                                       "Inbound tunnels refused: not from the destination's waypoint",
                                       ["destination_workload", "destination_workload_namespace", "source_principal"],
                                       registry=r)
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
        self._children: dict[ConnLabels, tuple] = {}

    def _series(self, labels: ConnLabels) -> tuple:
        """The four connection counters' children for these labels, looked up once per label
        set (prometheus_client's `labels(**)` validates and hashes the nine values on every
        call: four calls and two `asdict` per connection were ~1/30 of its Python time).
        Bounded as the counters' own series are: by the workloads and services there are."""
        series = self._children.get(labels)
        if series is None:
            values = asdict(labels)
            series = self._children[labels] = (self.opened.labels(**values), self.closed.labels(**values),
                                               self.received.labels(**values), self.sent.labels(**values))
        return series

    def connection_opened(self, labels: ConnLabels) -> None:
        self._series(labels)[0].inc()

    def connection_closed(self, labels: ConnLabels, request_bytes: int, response_bytes: int) -> None:
        _, closed, received, sent = self._series(labels)
        closed.inc()
        received.inc(request_bytes)
        sent.inc(response_bytes)

    def hbone_event(self, name: str, _peer: str) -> None:
        """`meshcore.hbone.ServerStats.on_event`: the refusals become metrics."""
        if name.startswith("limit_exceeded:"):
            self.hbone_limit_refusals.labels(limit=name.partition(":")[2]).inc()
        elif name == "tunnels_reset_early":
            self.hbone_early_resets.inc()

    def value(self, name: str, **labels: str) -> float:
        """Sum of a sample over series matching `labels` (for tests and the CLI)."""
        return sample_total(self.registry, name, **labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)

