"""Workloads (WorkloadEntry / Pod): who lives at which address, with which identity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from typing import Mapping

from ..identity import workload_identity
from ..mesh import Labels, serves_waypoint, waypoint_for, workload_enrollment
from ..resources import Resource


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    address: str
    service_account: str = "default"
    node: str = ""
    network_namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ports: dict[str, int] = field(default_factory=dict, hash=False)
    # In the mesh (meshcore.mesh.enrollment): reached over HBONE, not plaintext.
    in_mesh: bool = False
    mesh_reason: str = field(default="", compare=False)   # why in or out, for route explanations
    waypoint: str | None = None   # for traffic addressed to the workload itself (not via a Service)
    waypoint_of: str | None = None   # the Gateway (same namespace) this pod is a replica of
    trust_domain: str = "cluster.local"

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        return workload_identity(self.trust_domain, self.namespace, self.service_account)

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "address": self.address, "serviceAccount": self.service_account,
                "identity": self.identity, "node": self.node, "networkNamespace": self.network_namespace,
                "labels": dict(self.labels), "ports": dict(self.ports),
                "protocol": "HBONE" if self.in_mesh else "TCP", "mesh": self.mesh_reason,
                "waypoint": self.waypoint, "waypointOf": self.waypoint_of}


def from_resource(res: Resource, *, trust_domain: str, namespaces: Mapping[str, Labels]) -> Workload:
    """`namespaces`: every Namespace's labels by name (enrollment depends on them)."""
    spec = res.spec
    mesh = workload_enrollment(res, namespaces)
    serves = serves_waypoint(res.labels, spec.labels)
    return Workload(
        namespace=res.namespace, name=res.name,
        address=str(spec.address),
        service_account=spec.service_account,
        node=spec.node,
        network_namespace=spec.network_namespace,
        labels=dict(spec.labels),
        ports=dict(spec.ports),
        in_mesh=mesh.in_mesh, mesh_reason=mesh.reason,
        # A waypoint's own pods are never sent through a waypoint (no loop).
        waypoint=None if serves else waypoint_for(namespaces.get(res.namespace), res.labels),
        waypoint_of=serves,
        trust_domain=trust_domain,
    )

