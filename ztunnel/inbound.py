"""Inbound: an HBONE tunnel for this pod -> authority check -> L4 authz -> the app in the pod.

The app is dialled from inside the pod's netns at the pod's own IP, from the caller's
pod address when that is verified and the pod's netns routes replies back
(`transparent.py`), else from the pod's own address, as with Istio's in-pod ztunnel.
"""
from __future__ import annotations

import logging
import math
import time

import trio

from meshcore import authz, sockio
from meshcore.hbone.server import InboundTunnel
from meshcore.state import State, Workload
from meshcore.state import waypoints
from meshcore.telemetry import ConnLabels, log_connection
from meshcore.telemetry import source_labels as _source_labels

from .copy import Transfer, relay_tunnel
from .inputs import ProxyInputs
from .outbound import open_tcp_in
from .podinfo import PodInfo
from .transparent import Delivery, original_source

log = logging.getLogger("trellis.ztunnel.inbound")


CACHE_ENTRIES = 4096   # per pod and snapshot: (caller identity, address) labels, (identity, port, address) decisions
SNAPSHOT_POLL = 0.05   # how often a tunnel waiting out the config grace looks for a new snapshot


def _fronts_key(fronts: list) -> tuple:
    return tuple((w.namespace, w.name, getattr(w, "identities", None)) for w in fronts)


def _admitted(fronts: list, peer: str | None) -> bool:
    """The waypoint rule: no waypoint in front of the pod, or the peer is one's replica."""
    return not fronts or any(isinstance(w, waypoints.Waypoint) and peer in w.identities for w in fronts)


class PodView:
    """What one snapshot says about the pod, computed once per snapshot instead of per
    tunnel: its workload, first Service, L4 policies, the waypoints in front of it, and,
    filled as callers come, the metric labels per caller and authorization per
    (caller identity, port, address). A new snapshot is a new State object, hence a new view."""
    __slots__ = ("state", "workload", "service", "policies", "fronts", "callers", "decisions")

    def __init__(self, state: State, workload: Workload) -> None:
        self.state, self.workload = state, workload
        services = state.services_of(workload)
        self.service = services[0].key if services else "unknown"
        self.policies = state.policies_for(workload, at_ztunnel=True)
        self.fronts = waypoints.accepted_sources(state, workload)
        # (caller identity, address) -> (metric labels, the address to deliver from and why)
        self.callers: dict[tuple[str | None, str], tuple[ConnLabels, tuple[str | None, str]]] = {}
        self.decisions: dict[tuple[str | None, int, str | None], authz.Allow | authz.Deny] = {}

    def decide(self, peer: str | None, port: int, peer_ip: str | None = None) -> authz.Allow | authz.Deny:
        d = self.decisions.get((peer, port, peer_ip))
        if d is None:
            if len(self.decisions) >= CACHE_ENTRIES:
                self.decisions.clear()
            d = self.decisions[(peer, port, peer_ip)] = authz.evaluate(
                self.policies, peer, port, source_ip=peer_ip, destination_ip=self.workload.address)
        return d


class Inbound:
    def __init__(self, pod: PodInfo, inputs: ProxyInputs) -> None:
        self.pod, self.inputs = pod, inputs
        self.active = 0
        self.delivery = Delivery(pod.uid)
        self._view: PodView | None = None
        # the view before the last snapshot that changed the waypoints in front of the pod, and when
        self._before: PodView | None = None
        self._fronts_changed = -math.inf

    def view(self) -> PodView:
        """The pod as the current snapshot describes it (labels for policy; if the control
        plane does not know it yet, as the node agent's add message does)."""
        state = self.inputs.state()
        if self._view is None or self._view.state is not state:
            w = state.workload_by_uid(self.pod.uid) or Workload(
                namespace=self.pod.namespace, name=self.pod.name, address=self.pod.address,
                service_account=self.pod.service_account, in_mesh=True, trust_domain=self.pod.trust_domain)
            view = PodView(state, w)
            if self._view is not None and _fronts_key(self._view.fronts) != _fronts_key(view.fronts):
                self._before, self._fronts_changed = self._view, time.monotonic()
            self._view = view
        return self._view

    async def _settle(self, view: PodView, peer: str | None) -> tuple[PodView, bool]:
        """For a tunnel the waypoint rule refuses: (the view to decide with, whether the
        grace admits it). The config reaches this ztunnel and the caller's at different
        moments: a waypoint put in front of the pod moments ago does not yet refuse those
        it did not refuse before (the caller's ztunnel may not know it yet; the policies of
        that snapshot decide), and one taken away that we still see may be gone in the next
        snapshot (the caller's knew first)."""
        grace, before = self.inputs.config_grace, self._before
        if before is not None and time.monotonic() - self._fronts_changed < grace and _admitted(before.fronts, peer):
            return before, True
        with trio.move_on_after(grace):
            while not _admitted(view.fronts, peer):
                await trio.sleep(SNAPSHOT_POLL)
                view = self.view()
        return view, False

    def caller(self, view: PodView, peer: str | None, peer_ip: str) -> tuple[ConnLabels, tuple[str | None, str]]:
        """The caller's metric labels, and the address the app sees it from (and why)."""
        found = view.callers.get((peer, peer_ip))
        if found is None:
            if len(view.callers) >= CACHE_ENTRIES:
                view.callers.clear()
            labels = ConnLabels(
                reporter="destination", **_source_labels(peer, peer_ip, view.state),
                destination_workload=self.pod.name, destination_workload_namespace=self.pod.namespace,
                destination_principal=self.pod.identity, destination_service=view.service,
                connection_security_policy="mutual_tls")
            found = view.callers[(peer, peer_ip)] = (
                labels, original_source(view.state, peer, peer_ip, self.pod.address))
        return found

    def _bypass(self, fronts: list, peer: str | None) -> str | None:
        """Why a tunnel must be refused for skipping this pod's waypoint, or None. A pod
        behind a waypoint (its own, or a waypoint-fronted Service's) only takes tunnels
        from that waypoint's replicas, so a stale or hostile client cannot skip its L7
        policy by dialling the pod IP; a waypoint that does not exist admits no one."""
        if _admitted(fronts, peer):
            return None
        missing = [w.reason for w in fronts if isinstance(w, waypoints.WaypointMissing)]
        names = ", ".join(w.uid if isinstance(w, waypoints.Waypoint) else f"{w.namespace}/{w.name}" for w in fronts)
        self.inputs.metrics.waypoint_bypass.labels(self.pod.name, self.pod.namespace, str(peer)).inc()
        why = (f"{self.pod.uid} is behind waypoint {names}: only its replicas may connect, not {peer}; "
               f"clients must reach it through the waypoint (is the client's ztunnel up to date?)")
        return f"{why}; {'; '.join(missing)}" if missing else why

    def _refusal(self, tunnel: InboundTunnel, view: PodView, ip: str, port: int,
                 dst: str, in_grace: bool = False) -> tuple[int, str, str] | None:
        """(HTTP status, reason, outcome) when this tunnel must be refused before the app is dialled."""
        if ip != self.pod.address:
            return (400, f"tunnel authority {dst} is not this pod's address {self.pod.address} "
                         f"({self.pod.uid}); the client's endpoint data is stale", "bad_authority")
        bypass = None if in_grace else self._bypass(view.fronts, tunnel.peer_identity)
        if bypass is not None:
            log.warning("inbound to %s port %d: waypoint bypass refused: %s", self.pod.uid, port, bypass)
            return 403, bypass, "waypoint_bypass"
        # What a waypoint enforces (policies on its Services) is not enforced again here.
        decision = view.decide(tunnel.peer_identity, port, str(tunnel.peer_address[0]))
        if decision.audit:
            log.info("inbound to %s port %d from %s at %s: audited by %s", self.pod.uid, port,
                     tunnel.peer_identity, tunnel.peer_address[0], ", ".join(decision.audit))
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
        view = self.view()
        labels, origin = self.caller(view, tunnel.peer_identity, str(tunnel.peer_address[0]))
        src = f"{tunnel.peer_address[0]}:{tunnel.peer_address[1]}"
        dst = f"{ip}:{port}"
        transfer, outcome, app, app_src = Transfer(), "ok", None, None
        self.active += 1
        try:
            in_grace = False
            if not _admitted(view.fronts, tunnel.peer_identity):
                view, in_grace = await self._settle(view, tunnel.peer_identity)
            refusal = self._refusal(tunnel, view, ip, port, dst, in_grace)
            if refusal is None:
                sock, app_src = self.delivery.socket_for(self.pod.netns_fd, view.state, tunnel.peer_identity,
                                                         str(tunnel.peer_address[0]), self.pod.address, origin)
                try:
                    app = await open_tcp_in(self.pod.netns_fd, (self.pod.address, port), self.inputs.connect_timeout,
                                            sock)
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
            sockio.close_unwatched(app)   # the relay ended (or never began): nothing waits on it
            log_connection(direction="inbound", src=src, dst=dst, labels=labels, sent=transfer.sent,
                           received=transfer.received, started=started, outcome=outcome, error=transfer.error,
                           pod=self.pod.uid, app_src=app_src)
