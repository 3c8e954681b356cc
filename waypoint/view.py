"""The configuration a waypoint applies (pure): one snapshot of its view indexed for the
request path, plus the stateful per-Service pieces (clusters, rate limiters) carried over
from one snapshot to the next so that a new version keeps counters, ejections and buckets.

Policies at the waypoint (Istio's attachment for waypoints): AuthorizationPolicies whose
targetRefs name the Service (kind Service, same namespace) or this waypoint (kind Gateway,
same namespace), and root-namespace policies targeting the waypoint's GatewayClass.
Selector policies are for workloads and stay with ztunnel.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from meshcore.mesh import applies_at_every_waypoint, port_protocol, upstream_http_version
from meshcore.state import State
from meshcore.state.services import Service
from meshcore.state.workloads import Workload

from . import routedump
from .cluster import Cluster
from .filters.ratelimit import RateLimiter
from .policies import rate_limits, traffic_policy
from .routing import Backend, RouteRef, RouteTable

@dataclass(frozen=True)
class Endpoint:
    """One place to send a request: a workload's address and the Service's target port on it."""
    address: str
    port: int
    identity: str | None       # its SPIFFE ID when in the mesh (HBONE), None: plaintext TCP
    workload: str = ""          # ns/name, for metrics and /clusters
    service_account: str = ""
    # the HTTP version the Service port declares ("2": h2c prior knowledge, "1.1"); None: the client's
    http_version: str | None = None

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Target:
    """What a tunnel's authority designates: a Service (routes apply) or one workload behind a
    waypoint-fronted Service (the Service's policies apply, not its routes)."""
    service: Service
    port: int                       # the Service port
    workload: Workload | None = None
    workload_port: int = 0          # the port dialled on that workload


class View:
    def __init__(self, resources: Iterable[Any], *, trust_domain: str, namespace: str, gateway: str,
                 version: int | None = None, previous: "View | None" = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.resources = list(resources.values() if isinstance(resources, dict) else resources)
        self.namespace, self.gateway, self.version, self.clock = namespace, gateway, version, clock
        self.rng = rng or random.Random()
        self.state = State.from_resources(self.resources, trust_domain=trust_domain, version=version)
        ports = {(s.namespace, s.name): {p.port: p.name for p in s.ports} for s in self.state.services}
        self.routes = RouteTable(self.resources, ports)
        self._services = {(s.namespace, s.name): s for s in self.state.services}
        self.clusters: dict[str, Cluster] = dict(previous.clusters) if previous else {}
        self._limiters: dict[str, RateLimiter] = dict(previous._limiters) if previous else {}
        self._policy_cache: dict[str, list] = {}
        # per-request lookups, computed once per snapshot (a View never changes)
        self._endpoint_cache: dict[Backend, list[Endpoint]] = {}
        self._direct_cache: dict[tuple[str, int], Endpoint] = {}
        self._limit_cache: dict[tuple, list[tuple[str, Any]]] = {}
        # a Cluster keeps its state across snapshots but takes the new TrafficPolicy
        for key, c in list(self.clusters.items()):
            ns, name = key.split("/", 1)
            if (ns, name) not in self._services:
                del self.clusters[key]
            else:
                choice = traffic_policy(self.resources, ns, name)
                c.update(choice.spec, choice.name)

    # ---- what a tunnel is for --------------------------------------------------------
    def target(self, host: str, port: int) -> Target | None:
        svc = self.state.service_by_vip(host, port)
        if svc is not None:
            return Target(svc, port)
        wl = self.state.workload_by_address(host)
        if wl is None:
            return None
        # a pod dialled directly: the Service this waypoint fronts comes first
        services = sorted(self.state.services_of(wl), key=lambda s: s.waypoint != self.gateway)
        for svc in services:
            for p in svc.ports:
                if p.target_on(wl.ports) == port:
                    return Target(svc, p.port, wl, port)
        return None

    def target_policies(self, t: Target) -> list:
        """The Service's policies; for a pod dialled directly, those of every Service this
        waypoint fronts that the pod is behind (so no Service's DENY can be sidestepped)."""
        if t.workload is None:
            return self.authz_policies(t.service)
        out = []
        for svc in self.state.services_of(t.workload):
            if svc.waypoint == self.gateway and svc.namespace == self.namespace:
                out += [p for p in self.authz_policies(svc) if p not in out]
        return out

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get((namespace, name))

    def authz_policies(self, svc: Service) -> list:
        if svc.key not in self._policy_cache:
            out = []
            for p in self.state.policies:
                for kind, name in p.target_refs:
                    if ((kind == "Service" and p.namespace == svc.namespace and name == svc.name)
                            or (kind == "Gateway" and p.namespace == self.namespace and name == self.gateway)
                            or applies_at_every_waypoint(p.namespace, kind, name)):
                        out.append(p)
                        break
            self._policy_cache[svc.key] = out
        return self._policy_cache[svc.key]

    # ---- where it goes -----------------------------------------------------------------
    def endpoints(self, backend: Backend) -> list[Endpoint]:
        found = self._endpoint_cache.get(backend)
        if found is None:
            found = self._endpoint_cache[backend] = self._endpoints(backend)
        return found

    def _endpoints(self, backend: Backend) -> list[Endpoint]:
        svc = self.service(backend.namespace, backend.name)
        sp = svc.port(backend.port) if svc else None
        if sp is None:
            return []
        version = _http_version(sp)
        out = []
        for wl in self.state.endpoints(svc):
            port = sp.target_on(wl.ports)
            if port is not None:
                out.append(_endpoint(wl, port, version))
        return out

    def endpoint_of(self, wl: Workload, port: int) -> Endpoint:
        """A pod dialled directly: the protocol its port declares in the Services this waypoint
        fronts (the first that targets it, as `target` picks)."""
        found = self._direct_cache.get((wl.uid, port))
        if found is not None:
            return found
        version = None
        for svc in sorted(self.state.services_of(wl), key=lambda s: s.waypoint != self.gateway):
            sp = next((p for p in svc.ports if p.target_on(wl.ports) == port), None)
            if sp is not None:
                version = _http_version(sp)
                break
        found = self._direct_cache[(wl.uid, port)] = _endpoint(wl, port, version)
        return found

    def cluster(self, namespace: str, name: str) -> Cluster:
        key = f"{namespace}/{name}"
        c = self.clusters.get(key)
        if c is None:
            choice = traffic_policy(self.resources, namespace, name)
            c = self.clusters[key] = Cluster(key, choice.spec, self.clock, self.rng, choice.name)
        return c

    def limiters(self, svc: Service, route: RouteRef | None) -> list[RateLimiter]:
        key = (svc.key, route)
        specs = self._limit_cache.get(key)
        if specs is None:
            specs = self._limit_cache[key] = rate_limits(self.resources, svc.namespace, svc.name, route)
        out = []
        for name, spec in specs:
            lim = self._limiters.get(name)
            if lim is None or lim.spec != spec:
                lim = self._limiters[name] = RateLimiter(name, spec, self.clock)
            out.append(lim)
        return out

    # ---- admin -------------------------------------------------------------------------
    def dump_routes(self) -> list[dict]:
        """Admin /routes: per fronted Service port, its VIP, policies and attached routes."""
        out = []
        for svc in self.state.services:
            if svc.waypoint != self.gateway or svc.namespace != self.namespace:
                continue
            for p in svc.ports:
                out.append({"service": svc.key, "port": p.port, "vip": svc.cluster_ip,
                            "authorization": [a.key for a in self.authz_policies(svc)],
                            "rateLimits": [n for n, _ in rate_limits(self.resources, svc.namespace, svc.name)],
                            "trafficPolicy": traffic_policy(self.resources, svc.namespace, svc.name).name,
                            "routes": routedump.service_routes(self.routes, svc.namespace, svc.name, p.port)})
        return out

    def dump_clusters(self) -> list[dict]:
        out = []
        for svc in self.state.services:
            eps = [ep for p in svc.ports for ep in self.endpoints(Backend(svc.namespace, svc.name, p.port))]
            dump = self.cluster(svc.namespace, svc.name).dump(eps)
            for ep in eps:
                dump["endpoints"][str(ep)].update(workload=ep.workload, identity=ep.identity,
                                                   transport="hbone" if ep.identity else "plaintext")
            out.append(dump)
        return out


def _http_version(sp) -> str | None:
    """The HTTP version a Service port declares for its upstream (None: the client's)."""
    return upstream_http_version(port_protocol(sp.name, sp.app_protocol, sp.protocol))


def _endpoint(wl: Workload, port: int, http_version: str | None) -> Endpoint:
    return Endpoint(wl.address, port, wl.identity if wl.in_mesh else None, wl.uid, wl.service_account, http_version)
