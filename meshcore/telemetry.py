"""Telemetry vocabulary shared by the data plane (ztunnel, the waypoint): Istio's standard
metric labels for a connection, the source labels a peer's identity proves, and the
structured access-log line."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from .accesslog import AccessLog
from .identity import SpiffeId

access_log = logging.getLogger("trellis.access")
_LOG = AccessLog(access_log, json.JSONEncoder(sort_keys=True).encode)   # the line json.dumps(entry, sort_keys=True) was


def configure_logging(level: int | str, fmt: str) -> None:
    """Log to stderr in `fmt`, which must name no caller, thread or process: LogRecords then
    skip collecting them (the logging HOWTO's "Optimization": a frame walk, a getpid() and two
    lookups per record; ztunnel logs one record per connection, the waypoint one per request)."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.basicConfig(level=level, format=fmt)

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


def source_labels(identity: str | None, peer_ip: str, state: Any) -> dict[str, str]:
    """Name the source workload by its address when the certificate agrees; else only what the
    certificate proves (namespace, and the service account as the workload's name)."""
    ns = name = "unknown"
    w = state.workload_by_address(peer_ip)
    if w is not None and w.identity == identity:
        ns, name = w.namespace, w.name
    elif identity:
        try:
            sid = SpiffeId.parse(identity)
        except ValueError:
            pass   # not a workload identity (a node's credential): the principal says it all
        else:
            ns, name = sid.namespace, sid.service_account
    return {"source_workload": name, "source_workload_namespace": ns, "source_principal": identity or "unknown"}


def log_connection(*, direction: str, src: str, dst: str, labels: ConnLabels, sent: int, received: int,
                   started: float, outcome: str, error: str | None = None, **extra: object) -> dict:
    """Emit one structured access-log line and return it."""
    if not access_log.isEnabledFor(logging.INFO):
        return {}
    entry = {"direction": direction, "src": src, "dst": dst,
             "src.identity": labels.source_principal, "dst.identity": labels.destination_principal,
             "dst.service": labels.destination_service, "bytes_sent": sent, "bytes_received": received,
             "duration_ms": round((time.monotonic() - started) * 1000, 1), "outcome": outcome}
    if error:
        entry["error"] = error
    entry.update(extra)
    _LOG.write(entry)   # buffered (meshcore.accesslog); through logging in any other setup
    return entry


def sample_total(registry: Any, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the series matching `labels` (tests and the CLI read
    metrics this way; `registry` is a prometheus_client CollectorRegistry)."""
    total = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
