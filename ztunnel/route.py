"""The outbound decision (pure): where an intercepted connection goes and whom to expect.

Like ztunnel's `outbound.rs` Request: given the source workload and the original
destination, pick HBONE to an endpoint, HBONE to a waypoint, plaintext passthrough, or
refusal. No I/O here.

Waypoints (meshcore.state.waypoints), as Istio ambient:
- a Service with a waypoint: HBONE to one of the waypoint's replicas (round robin), the
  CONNECT authority staying the Service's VIP:port, the expected identity the replica's;
- a pod IP whose workload has a waypoint, or backs a waypoint-fronted Service: through that
  waypoint too, authority = pod IP:port (the waypoint applies the Service's policies, not
  its routes: GAMMA routes attach to the Service address only);
- a waypoint's own replicas always go direct (no loop); a waypoint that does not exist or
  has no ready replica refuses the connection, saying which and what to do.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

from meshcore import ports
from meshcore.state import Service, State, Workload
from meshcore.state import waypoints

Pick = Callable[[Service, Sequence[Workload]], Workload]


@dataclass(frozen=True)
class Hbone:
    endpoint_ip: str
    target_port: int
    expected_identity: str
    destination: Workload
    service: str | None = None  # "ns/name" when reached through a VIP
    waypoint: str | None = None   # "ns/name" of the waypoint when the endpoint is one of its replicas
    original: tuple[str, int] | None = None   # via a waypoint: the address the app dialled

    @property
    def hbone_address(self) -> tuple[str, int]:
        return (self.endpoint_ip, ports.HBONE)

    @property
    def authority(self) -> str:
        """The CONNECT `:authority`: the endpoint's ip:port, or through a waypoint the
        original destination (the VIP:port or pod ip:port the app dialled)."""
        ip, port = self.original or (self.endpoint_ip, self.target_port)
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{port}"


@dataclass(frozen=True)
class Plaintext:
    ip: str
    port: int
    reason: str
    destination: Workload | None = None
    service: str | None = None


@dataclass(frozen=True)
class Refuse:
    reason: str
    service: str | None = None


Route = Hbone | Plaintext | Refuse


class RoundRobin:
    """Per-service (or per-waypoint: anything with a `key`) round robin; endpoints arrive
    sorted by uid so the order is stable."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count] = {}

    def __call__(self, service: Service, endpoints: Sequence[Workload]) -> Workload:
        n = next(self._counters.setdefault(service.key, itertools.count()))
        return endpoints[n % len(endpoints)]


def first(service: Service, endpoints: Sequence[Workload]) -> Workload:
    return endpoints[0]


def _to_workload(w: Workload, port: int, service: str | None) -> Route:
    if w.in_mesh:
        return Hbone(endpoint_ip=w.address, target_port=port, expected_identity=w.identity,
                     destination=w, service=service)
    return Plaintext(w.address, port, f"{w.uid} is not in the mesh ({w.mesh_reason or 'not enrolled'}): plaintext",
                     destination=w, service=service)


def _via_waypoint(wp: waypoints.Waypoint | waypoints.WaypointMissing, orig_dst: tuple[str, int], pick: Pick,
                  service: str | None) -> Route:
    if isinstance(wp, waypoints.WaypointMissing):
        return Refuse(wp.reason, service=service)
    if not wp.replicas:
        return Refuse(f"waypoint {wp.uid} has no ready replica (pods labelled "
                      f"gateway.networking.k8s.io/gateway-name={wp.name} in namespace {wp.namespace}); "
                      f"check `trellis waypoint status -n {wp.namespace}`: traffic that must pass its "
                      f"policies is refused meanwhile", service=service)
    chosen = pick(wp, wp.replicas)  # type: ignore[arg-type]  (anything with a key)
    return Hbone(endpoint_ip=chosen.address, target_port=ports.HBONE, expected_identity=chosen.identity,
                 destination=chosen, service=service, waypoint=wp.uid, original=orig_dst)


def decide(state: State, source: Workload | None, orig_dst: tuple[str, int], pick: Pick = first) -> Route:
    ip, port = orig_dst
    # A waypoint's replicas reach Services and pods directly: sending them back would loop.
    from_waypoint = source is not None and source.waypoint_of is not None
    svc = state.service_by_vip(ip, port)
    if svc is not None:
        wp = None if from_waypoint else waypoints.for_service(state, svc)
        if wp is not None:
            return _via_waypoint(wp, orig_dst, pick, svc.key)
        endpoints = state.endpoints(svc)
        if not endpoints:
            return Refuse(f"no healthy endpoints for service {svc.key}", service=svc.key)
        target = svc.port(port)
        if isinstance(target.target_port, str):  # named: only endpoints that name that port serve it
            endpoints = [w for w in endpoints if target.target_on(w.ports) is not None]
            if not endpoints:
                return Refuse(f"no endpoint of service {svc.key} has a port named {target.target_port!r} "
                              f"(its targetPort for port {port})", service=svc.key)
        chosen = pick(svc, endpoints)
        return _to_workload(chosen, target.target_on(chosen.ports), svc.key)
    other = state.service_at_ip(ip)
    if other is not None:
        known = ", ".join(str(p.port) for p in other.ports) or "none"
        return Refuse(f"service {other.key} has no port {port} (ports: {known})", service=other.key)
    w = state.workload_by_address(ip)
    if w is not None:
        if source is not None and w.uid == source.uid:
            # Talking to your own address never leaves the pod; no tunnel to build.
            return Plaintext(ip, port, f"{w.uid} connecting to itself: direct")
        # Bypass rule: a pod IP behind a waypoint goes through it too (only in the mesh: a
        # pod outside it has no ztunnel to insist on it, and the waypoint no HBONE to it).
        wp = None if from_waypoint or not w.in_mesh else waypoints.for_workload(state, w)
        if wp is not None:
            return _via_waypoint(wp, orig_dst, pick, None)
        return _to_workload(w, port, None)
    return Plaintext(ip, port, "passthrough: destination is not a known service or workload")
