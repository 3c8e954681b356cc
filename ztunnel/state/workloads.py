"""Workloads (WorkloadEntry / Pod): who lives at which address, with which identity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _fields

AMBIENT_LABEL = "trellis.dev/dataplane-mode"


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
    # True when the namespace is enrolled (ambient): reached over HBONE, not plaintext.
    in_mesh: bool = False
    trust_domain: str = "cluster.local"

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "address": self.address, "serviceAccount": self.service_account,
                "identity": self.identity, "node": self.node, "networkNamespace": self.network_namespace,
                "labels": dict(self.labels), "ports": dict(self.ports),
                "protocol": "HBONE" if self.in_mesh else "TCP"}


def from_resource(res: Any, *, trust_domain: str, enrolled_namespaces: set[str]) -> Workload:
    spec = res.spec
    return Workload(
        namespace=res.namespace, name=res.name,
        address=str(_fields.get(spec, "address")),
        service_account=_fields.get(spec, "service_account", "serviceAccount", default="default"),
        node=_fields.get(spec, "node", default=""),
        network_namespace=_fields.get(spec, "network_namespace", "networkNamespace"),
        labels=dict(_fields.get(spec, "labels", default={})),
        ports=dict(_fields.get(spec, "ports", default={})),
        in_mesh=res.namespace in enrolled_namespaces,
        trust_domain=trust_domain,
    )


def enrolled(namespace_resources: list[Any]) -> set[str]:
    return {r.name for r in namespace_resources if (r.labels or {}).get(AMBIENT_LABEL) == "ambient"}
