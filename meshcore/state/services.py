"""Services: a VIP and ports in front of the workloads its selector picks."""
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
    cluster_ip: str | None
    selector: dict[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[ServicePort, ...] = ()
    waypoint: str | None = None   # the waypoint (same namespace) its traffic goes through

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    def dump(self) -> dict[str, Any]:
        return {"name": self.key, "clusterIP": self.cluster_ip, "selector": dict(self.selector),
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol,
                           "appProtocol": p.app_protocol,
                           "declared": port_protocol(p.name, p.app_protocol, p.protocol)} for p in self.ports], "waypoint": self.waypoint}


def from_resource(res: Resource, *, namespaces: Mapping[str, Labels]) -> Service:
    """`namespaces`: every Namespace's labels by name (a Service may inherit its waypoint)."""
    spec = res.spec
    return Service(namespace=res.namespace, name=res.name, cluster_ip=str(spec.cluster_ip),
                   selector=dict(spec.selector), ports=spec.ports,
                   waypoint=waypoint_for(namespaces.get(res.namespace), res.labels))
