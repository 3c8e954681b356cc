"""The waypoint's Prometheus metrics, with Istio's names and labels (reporter="waypoint"),
and its structured access log (one JSON line per request, logger `trellis.access`)."""
from __future__ import annotations

import logging
import operator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from meshcore.telemetry import sample_total

from . import accesslog

REQUEST_LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
                  "destination_service", "destination_service_name", "destination_service_namespace",
                  "destination_workload", "destination_workload_namespace", "destination_principal",
                  "response_code", "request_protocol", "connection_security_policy")
# Istio's default buckets for istio_request_duration_milliseconds
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
           1800000, 3600000)
access_log = accesslog.access_log
_ALL_LABELS = operator.itemgetter(*REQUEST_LABELS)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter("istio_requests", "Requests through the waypoint", REQUEST_LABELS, registry=r)
        self.duration = Histogram("istio_request_duration_milliseconds", "Request duration (ms)", REQUEST_LABELS,
                                  buckets=BUCKETS, registry=r)
        self.retries = Counter("trellis_waypoint_retries", "Retries sent", ("destination_service", "reason"),
                               registry=r)
        self.retry_budget_exhausted = Counter("trellis_waypoint_retry_budget_exhausted",
                                              "Retries refused by the retry budget", ("destination_service",),
                                              registry=r)
        self.ejections = Counter("trellis_waypoint_outlier_ejections", "Endpoints ejected by outlier detection",
                                 ("destination_service",), registry=r)
        self.rate_limited = Counter("trellis_waypoint_rate_limited", "Requests refused with 429",
                                    ("destination_service", "policy"), registry=r)
        self.authz_denied = Counter("trellis_waypoint_authz_denied", "Requests refused with 403",
                                    ("destination_service", "policy"), registry=r)
        self.overflows = Counter("trellis_waypoint_pool_overflows", "Requests refused with 503 (pool limits)",
                                 ("destination_service",), registry=r)
        self.tunnels = Counter("trellis_waypoint_tunnels", "Inbound HBONE tunnels by detected protocol",
                               ("protocol",), registry=r)
        self.config_version = Gauge("trellis_config_version", "Version of the applied snapshot", registry=r)
        self._children: dict[tuple, tuple] = {}
        self.cp_connected = Gauge("trellis_control_plane_connected", "1 when the control-plane watch is up",
                                  registry=r)

    def request_done(self, labels: dict[str, str], millis: float) -> None:
        try:
            key = _ALL_LABELS(labels)   # every label set: the usual request that reached a backend
        except KeyError:
            get = labels.get
            key = tuple([get(k, "unknown") for k in REQUEST_LABELS])
        children = self._children.get(key)
        if children is None:   # prometheus_client's labels() lookup is costly per request: keep the children
            children = self._children[key] = (self.requests.labels(*key), self.duration.labels(*key))
        children[0].inc()
        children[1].observe(millis)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Sum of a sample over series matching `labels` (tests, CLI)."""
        return sample_total(self.registry, name, **labels)


def log_request(**fields) -> None:
    if access_log.isEnabledFor(logging.INFO):
        accesslog.LOG.write(fields)
