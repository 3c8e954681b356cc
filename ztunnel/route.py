"""The outbound decision (pure): where an intercepted connection goes and whom to expect.

Like ztunnel's `outbound.rs` Request: given the source workload and the original
destination, pick HBONE to an endpoint, plaintext passthrough, or refusal. No I/O here.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

from meshcore import ports
from meshcore.state import Service, State, Workload

Pick = Callable[[Service, Sequence[Workload]], Workload]


@dataclass(frozen=True)
class Hbone:
    endpoint_ip: str
    target_port: int
    expected_identity: str
    destination: Workload
    service: str | None = None  # "ns/name" when reached through a VIP

    @property
    def hbone_address(self) -> tuple[str, int]:
        return (self.endpoint_ip, ports.HBONE)

    @property
    def authority(self) -> str:
        host = f"[{self.endpoint_ip}]" if ":" in self.endpoint_ip else self.endpoint_ip
        return f"{host}:{self.target_port}"


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
    """Per-service round robin; endpoints arrive sorted by uid so the order is stable."""

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


def decide(state: State, source: Workload | None, orig_dst: tuple[str, int], pick: Pick = first) -> Route:
    ip, port = orig_dst
    svc = state.service_by_vip(ip, port)
    if svc is not None:
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
        return _to_workload(w, port, None)
    return Plaintext(ip, port, "passthrough: destination is not a known service or workload")
