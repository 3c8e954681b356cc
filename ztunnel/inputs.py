"""The one explicit bundle of what the proxies depend on (ztunnel's ProxyInputs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

from meshcore.certs import CertificateManager
from meshcore.state import State

from . import route
from .metrics import Metrics


@dataclass
class ProxyInputs:
    state: Callable[[], State]              # the current snapshot (replaced on each update)
    certs: CertificateManager
    metrics: Metrics
    origdst_fd: Callable[[], int | None]    # the node agent's map; a new hello replaces it
    trust_domain: str = "cluster.local"
    pick: route.Pick = field(default_factory=route.RoundRobin)
    connect_timeout: float = 10.0
    drain_timeout: float = 30.0
    # the config reaches this ztunnel and the callers' at different moments: for this long a
    # tunnel the waypoint-bypass rule refuses is admitted if the previous snapshot admitted
    # it, or waits for a snapshot that does (ztunnel/inbound.py)
    config_grace: float = 3.0
    # Returns once the first config snapshot is in: a restarted ztunnel must not accept
    # the connections queued for it before it can route them. None: no wait (tests).
    configured: Callable[[], Awaitable[None]] | None = None
