"""Services: a VIP and ports in front of the workloads its selector picks.

A headless Service (`clusterIP: None`) has no VIP: nothing is captured or balanced by its
address, its pods are dialled by their own IPs (the L4 path, and the pod-IP rules of
waypoints), and it still names its endpoints for policy (targetRefs) and waypoint use, as in
Istio ambient. ExternalName Services are not here at all (State.from_resources leaves them
out): a DNS alias, with neither VIP nor endpoints for the data path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from typing import Mapping

from ..mesh import Labels, port_protocol, waypoint_for
from ..resources import Resource, ServicePort  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str | None   # None: headless (no VIP)
    selector: dict[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[ServicePort, ...] = ()
    waypoint: str | None = None   # the waypoint (same namespace) its traffic goes through
    headless: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    def dump(self) -> dict[str, Any]:
        # clusterIP as the API server writes it: "None" for a headless Service
        return {"name": self.key, "clusterIP": "None" if self.headless else self.cluster_ip,
                "selector": dict(self.selector),
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol,
                           "appProtocol": p.app_protocol,
                           "declared": port_protocol(p.name, p.app_protocol, p.protocol)} for p in self.ports], "waypoint": self.waypoint}


def from_resource(res: Resource, *, namespaces: Mapping[str, Labels]) -> Service:
    """`namespaces`: every Namespace's labels by name (a Service may inherit its waypoint)."""
    spec = res.spec
    return Service(namespace=res.namespace, name=res.name,
                   cluster_ip=None if spec.cluster_ip is None else str(spec.cluster_ip), headless=spec.headless,
                   selector=dict(spec.selector), ports=spec.ports,
                   waypoint=waypoint_for(namespaces.get(res.namespace), res.labels))
