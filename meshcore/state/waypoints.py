"""Which pods are a waypoint's, and which waypoint a destination must be reached through (pure).

A waypoint is a Gateway of class `trellis-waypoint`; its replicas are the workloads of the
Gateway's namespace labelled `gateway.networking.k8s.io/gateway-name: <gateway>`. ztunnel
(outbound: where to send; inbound: whom to accept) and the control plane (who may act as
a waypoint) all decide from here.

A label naming a waypoint that does not exist fails closed with a reason, as Istio does:
traffic is refused rather than silently skipping the L7 policy the label asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from ..identity import workload_identity

if TYPE_CHECKING:
    from .services import Service
    from .store import State
    from .workloads import Workload


@dataclass(frozen=True)
class Waypoint:
    """A waypoint that exists: its ready replicas (sorted by uid) and the identities a
    destination accepts from it."""
    namespace: str
    name: str
    replicas: tuple["Workload", ...]
    identities: frozenset[str]

    @property
    def key(self) -> str:
        """What round robin keeps its counter under (never a Service's "ns/name")."""
        return f"waypoint:{self.namespace}/{self.name}"

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WaypointMissing:
    namespace: str
    name: str
    reason: str


def default_service_account(gateway: str) -> str:
    """A waypoint's ServiceAccount unless its pods name another (Istio: the Gateway's name)."""
    return gateway


def replicas_of(workloads: Iterable["Workload"], namespace: str, gateway: str) -> list["Workload"]:
    """Every workload (ready or not) that runs as a replica of `namespace/gateway`."""
    return [w for w in workloads if w.namespace == namespace and w.waypoint_of == gateway]


def waypoint_identities(trust_domain: str, namespace: str, gateway: str, replicas: Iterable["Workload"]) -> frozenset[str]:
    """The identities a waypoint's traffic arrives with: its replicas' ServiceAccounts, or
    the default one (the Gateway's name) while it has no replica to tell."""
    ids = frozenset(w.identity for w in replicas)
    return ids or frozenset({workload_identity(trust_domain, namespace, default_service_account(gateway))})


def resolve(state: "State", namespace: str, name: str) -> Waypoint | WaypointMissing:
    """The waypoint `namespace/name`, or why it cannot be used."""
    if (namespace, name) not in state.gateways:
        return WaypointMissing(namespace, name, f"waypoint {namespace}/{name} does not exist: no Gateway of class "
                               f"trellis-waypoint named {name} in namespace {namespace} (create it with "
                               f"`trellis waypoint apply -n {namespace} --name {name}`, or remove the "
                               f"trellis.dev/use-waypoint label)")
    # Every replica the view lists is ready: the lab lists a WorkloadEntry once its pod
    # runs, the Kubernetes source a Pod once it has an IP. Enrolled or not does not matter
    # here: a waypoint terminates and originates HBONE itself (Istio labels its waypoint
    # pods out of the mesh), so it is reached on the HBONE port either way.
    every = tuple(replicas_of(state.workloads, namespace, name))
    return Waypoint(namespace, name, every, waypoint_identities(state.trust_domain, namespace, name, every))


def for_service(state: "State", service: "Service") -> Waypoint | WaypointMissing | None:
    """The waypoint traffic to `service`'s VIP goes through, None for the L4 path."""
    return resolve(state, service.namespace, service.waypoint) if service.waypoint else None


def for_workload(state: "State", workload: "Workload") -> Waypoint | WaypointMissing | None:
    """The waypoint traffic addressed to `workload` itself (its pod IP) goes through: its
    own (label or namespace label), else that of the first waypoint-fronted Service it backs
    (by Service key, so every node picks the same). A waypoint replica has none."""
    if workload.waypoint_of:
        return None
    if workload.waypoint:
        return resolve(state, workload.namespace, workload.waypoint)
    for svc in state.services_of(workload):
        if svc.waypoint:
            return resolve(state, svc.namespace, svc.waypoint)
    return None


def accepted_sources(state: "State", workload: "Workload") -> list[Waypoint | WaypointMissing]:
    """Every waypoint that may deliver to `workload` (its own and those of each
    waypoint-fronted Service it backs): the destination ztunnel accepts HBONE to it only
    from these waypoints' identities. Empty: no waypoint in front, any identity may come."""
    if workload.waypoint_of:
        return []
    names = ([workload.waypoint] if workload.waypoint else []) + \
        [s.waypoint for s in state.services_of(workload) if s.waypoint]
    return [resolve(state, workload.namespace, n) for n in dict.fromkeys(names)]
