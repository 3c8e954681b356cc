"""The indexed store the data plane routes and authorizes from, rebuilt on every control-plane update.

Rebuilding from the full resource map keeps it simple and consistent (no partial
updates to reason about); a node's view is small enough that this costs little.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from ..mesh import namespace_in_mesh, namespace_labels
from ..resources import matches

from . import policies, services, workloads
from .policies import AuthzPolicy
from .services import Service
from .workloads import Workload


@dataclass
class State:
    trust_domain: str = "cluster.local"
    version: int | None = None
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    policies: list[AuthzPolicy] = field(default_factory=list)
    enrolled_namespaces: frozenset[str] = frozenset()
    # (namespace, name) of every Gateway of class trellis-waypoint: the waypoints that exist.
    gateways: frozenset[tuple[str, str]] = frozenset()
    # Problems met while indexing; reported in config_dump instead of crashing.
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workloads = sorted(self.workloads, key=lambda w: w.uid)
        self.services = sorted(self.services, key=lambda s: s.key)
        self.policies = sorted(self.policies, key=lambda p: p.key)
        self._by_address: dict[str, Workload] = {}
        for w in self.workloads:
            if w.address in self._by_address:
                self.warnings.append(f"workloads {self._by_address[w.address].uid} and {w.uid} share address "
                                     f"{w.address}; using {self._by_address[w.address].uid}")
                continue
            self._by_address[w.address] = w
        self._by_uid = {w.uid: w for w in self.workloads}
        self._by_vip: dict[tuple[str, int], Service] = {}
        self._vips: dict[str, Service] = {}
        for s in self.services:
            if not s.cluster_ip:
                continue
            self._vips.setdefault(s.cluster_ip, s)
            for p in s.ports:
                self._by_vip.setdefault((s.cluster_ip, p.port), s)
        self._endpoints = {s.key: [w for w in self.workloads
                                   if w.namespace == s.namespace and s.selector
                                   and matches(s.selector, w.labels)]
                           for s in self.services}

    # ---- lookups -------------------------------------------------------------
    def workload_by_address(self, ip: str) -> Workload | None:
        return self._by_address.get(ip)

    def workload_by_uid(self, uid: str) -> Workload | None:
        return self._by_uid.get(uid)

    def service_by_vip(self, ip: str, port: int) -> Service | None:
        return self._by_vip.get((ip, port))

    def service_at_ip(self, ip: str) -> Service | None:
        """Any service owning this VIP, whatever the port (to explain a wrong port)."""
        return self._vips.get(ip)

    def endpoints(self, service: Service) -> list[Workload]:
        return list(self._endpoints.get(service.key, ()))

    def services_of(self, workload: Workload) -> list[Service]:
        return [s for s in self.services if workload in self._endpoints.get(s.key, ())]

    def identity_of(self, workload: Workload) -> str:
        return workload.identity

    def policies_for(self, workload: Workload, *, at_ztunnel: bool = False) -> list[AuthzPolicy]:
        """AuthorizationPolicies that apply to `workload` (Istio's attachment rules).
        `at_ztunnel`: leave out what a waypoint enforces instead, a targetRef to a Service
        that has a waypoint (its L7 rules are evaluated there, on each request)."""
        svc_names = {s.name for s in self.services_of(workload) if not (at_ztunnel and s.waypoint)}
        out = []
        for p in self.policies:
            if p.namespace == policies.ROOT_NAMESPACE and p.selector is None and not p.target_refs:
                out.append(p)
                continue
            if p.namespace != workload.namespace and p.namespace != policies.ROOT_NAMESPACE:
                continue
            if p.target_refs:
                if any((kind == "Service" and name in svc_names and p.namespace == workload.namespace)
                       or (kind == "Namespace" and name == workload.namespace) for kind, name in p.target_refs):
                    out.append(p)
            elif p.selector is not None:
                if matches(dict(p.selector), workload.labels):
                    out.append(p)
            elif p.namespace == workload.namespace:
                out.append(p)
        return out

    # ---- admin ---------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "trustDomain": self.trust_domain,
            "enrolledNamespaces": sorted(self.enrolled_namespaces),
            "waypoints": [f"{ns}/{name}" for ns, name in sorted(self.gateways)],
            "workloads": [w.dump() for w in self.workloads],
            "services": [dict(s.dump(), endpoints=[w.uid for w in self.endpoints(s)]) for s in self.services],
            "policies": [p.dump() for p in self.policies],
            "warnings": list(self.warnings),
        }

    # ---- construction ----------------------------------------------------------
    @classmethod
    def from_resources(cls, resources: Iterable[Any], *, trust_domain: str = "cluster.local",
                       version: int | None = None) -> "State":
        """Index the control plane's resource list (or a dict keyed by resource key).

        A resource that cannot be indexed is skipped with a warning naming it, so one bad
        object does not take the node's whole view down."""
        if isinstance(resources, dict):
            resources = resources.values()
        by_kind: dict[str, list[Any]] = {}
        for r in resources:
            if r.kind == "Service" and getattr(r.spec, "type", "") == "ExternalName":
                continue   # a DNS alias: no VIP, no endpoints; nothing for the data path (Istio ambient alike)
            by_kind.setdefault(r.kind, []).append(r)
        namespaces = namespace_labels(by_kind.get("Namespace", []))
        warnings: list[str] = []

        def build(kind: str, fn):
            out = []
            for r in by_kind.get(kind, []):
                try:
                    out.append(fn(r))
                except (TypeError, ValueError, AttributeError) as exc:
                    warnings.append(f"{kind} {r.namespace}/{r.name}: skipped, cannot index it: {exc}")
            return out

        for r in by_kind.get("AuthorizationPolicy", []):
            try:
                warnings += [str(w) for w in policies.warnings(r)]
            except (TypeError, ValueError, AttributeError):
                pass   # one that cannot be read is skipped, and said so, by build() below
        return cls(trust_domain=trust_domain, version=version,
                   workloads=build("WorkloadEntry", lambda r: workloads.from_resource(
                       r, trust_domain=trust_domain, namespaces=namespaces)),
                   services=build("Service", lambda r: services.from_resource(r, namespaces=namespaces)),
                   policies=build("AuthorizationPolicy", policies.from_resource),
                   enrolled_namespaces=frozenset(n for n, labels in namespaces.items() if namespace_in_mesh(labels)),
                   gateways=frozenset((r.namespace, r.name) for r in by_kind.get("Gateway", [])
                                      if getattr(r.spec, "is_waypoint", False)),
                   warnings=warnings)
