"""What ztunnel knows about a local pod from the node agent's `add` (docs/internals.md ZDS)."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from meshcore import netns
from meshcore.identity import workload_identity


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    address: str
    service_account: str
    netns_fd: int
    trust_domain: str = "cluster.local"
    # Built once: every connection's labels and logs name it, and a string per
    # connection is memory an idle connection holds.
    identity: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", workload_identity(self.trust_domain, self.namespace,
                                                               self.service_account))

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"

    def socket_factory(self, family: int = socket.AF_INET) -> socket.socket:
        return netns.socket_in(self.netns_fd, family)

    @classmethod
    def from_message(cls, msg: dict[str, Any], netns_fd: int, trust_domain: str) -> "PodInfo":
        missing = [k for k in ("namespace", "name", "address") if not msg.get(k)]
        if missing:
            raise ValueError(f"add message is missing {', '.join(missing)} (got keys {sorted(msg)})")
        uid = msg.get("uid")
        info = cls(namespace=msg["namespace"], name=msg["name"], address=str(msg["address"]),
                   service_account=msg.get("serviceAccount") or "default", netns_fd=netns_fd,
                   trust_domain=trust_domain)
        if uid and uid != info.uid:
            raise ValueError(f"add message uid {uid!r} does not match namespace/name {info.uid!r}")
        return info

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "address": self.address, "identity": self.identity}
