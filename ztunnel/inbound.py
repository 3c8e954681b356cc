"""Inbound: an HBONE tunnel for this pod -> authority check -> L4 authz -> the app in the pod.

The app is dialled from inside the pod's netns at the pod's own IP, so it sees a local
connection from the pod address, as with Istio's in-pod ztunnel.
"""
from __future__ import annotations

import logging
import time

from meshcore import sockio
from meshcore.hbone.server import InboundTunnel

from . import authz
from .copy import Transfer, relay_tunnel
from .inputs import ProxyInputs
from .metrics import ConnLabels, log_connection
from .outbound import open_tcp_in
from .podinfo import PodInfo
from .state import Workload

log = logging.getLogger("trellis.ztunnel.inbound")


def _source_labels(identity: str | None, peer_ip: str, state) -> dict[str, str]:
    """Name the source workload by its address when the certificate agrees; else only what the
    certificate proves (namespace and service account)."""
    ns = name = "unknown"
    w = state.workload_by_address(peer_ip)
    if w is not None and w.identity == identity:
        ns, name = w.namespace, w.name
    elif identity and "/ns/" in identity and "/sa/" in identity:
        ns = identity.split("/ns/", 1)[1].split("/", 1)[0]
        name = identity.rsplit("/sa/", 1)[1]
    return {"source_workload": name, "source_workload_namespace": ns, "source_principal": identity or "unknown"}


class Inbound:
    def __init__(self, pod: PodInfo, inputs: ProxyInputs) -> None:
        self.pod, self.inputs = pod, inputs
        self.active = 0

    def workload(self) -> Workload:
        """The pod as the control plane describes it (labels for policy), else from the add message."""
        w = self.inputs.state().workload_by_uid(self.pod.uid)
        return w or Workload(namespace=self.pod.namespace, name=self.pod.name, address=self.pod.address,
                             service_account=self.pod.service_account, in_mesh=True,
                             trust_domain=self.pod.trust_domain)

    def _refusal(self, tunnel: InboundTunnel, policies, ip: str, port: int, dst: str) -> tuple[int, str, str] | None:
        """(HTTP status, reason, outcome) when this tunnel must be refused before the app is dialled."""
        if ip != self.pod.address:
            return (400, f"tunnel authority {dst} is not this pod's address {self.pod.address} "
                         f"({self.pod.uid}); the client's endpoint data is stale", "bad_authority")
        decision = authz.evaluate(policies, tunnel.peer_identity, port)
        if isinstance(decision, authz.Deny):
            log.warning("inbound to %s port %d: RBAC denied %s: %s", self.pod.uid, port,
                        tunnel.peer_identity, decision.reason)
            return 403, decision.reason, "denied"
        return None

    async def handle(self, tunnel: InboundTunnel) -> None:
        """One tunnel, from its CONNECT to the last byte (one task: its frame is most of what
        an idle proxied connection costs here)."""
        started = time.monotonic()
        ip, port = tunnel.authority
        state = self.inputs.state()
        workload = self.workload()
        services = state.services_of(workload)
        labels = ConnLabels(reporter="destination", **_source_labels(tunnel.peer_identity, str(tunnel.peer_address[0]), state),
                            destination_workload=self.pod.name, destination_workload_namespace=self.pod.namespace,
                            destination_principal=self.pod.identity,
                            destination_service=services[0].key if services else "unknown",
                            connection_security_policy="mutual_tls")
        src = f"{tunnel.peer_address[0]}:{tunnel.peer_address[1]}"
        dst = f"{ip}:{port}"
        transfer, outcome, app = Transfer(), "ok", None
        self.active += 1
        try:
            refusal = self._refusal(tunnel, state.policies_for(workload), ip, port, dst)
            if refusal is None:
                try:
                    app = await open_tcp_in(self.pod.netns_fd, (self.pod.address, port), self.inputs.connect_timeout)
                except ConnectionError as exc:
                    refusal = (503, f"connection refused by the application on port {port} in {self.pod.uid} "
                                    f"({exc}); is the app listening on {self.pod.address}:{port} or 0.0.0.0?",
                               "app_unreachable")
            if refusal is not None:
                status, transfer.error, outcome = refusal
                await tunnel.refuse(status, transfer.error)
                return
            stream = await tunnel.accept()
            self.inputs.metrics.connection_opened(labels)
            try:
                r = await relay_tunnel(app, stream, sock_role="app")
            finally:
                # Inbound direction: "sent" is what reaches the app (toward the destination).
                transfer.sent, transfer.received = stream.bytes_received, stream.bytes_sent
                self.inputs.metrics.connection_closed(labels, transfer.sent, transfer.received)
            if r.error:
                transfer.error, outcome = r.error, "reset"
        finally:
            self.active -= 1
            if tunnel.reset_code is not None and outcome == "ok":   # the client reset it (maybe mid-dial)
                outcome, transfer.error = "reset", transfer.error or f"client reset the tunnel (code {tunnel.reset_code})"
            sockio.close(app)
            log_connection(direction="inbound", src=src, dst=dst, labels=labels, sent=transfer.sent,
                           received=transfer.received, started=started, outcome=outcome, error=transfer.error,
                           pod=self.pod.uid)
