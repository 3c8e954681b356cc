"""What ztunnel knows about a local pod from the node agent's `add` (meshcore.wire.zds)."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from meshcore import netns, podsockets
from meshcore.identity import workload_identity
from meshcore.wire.zds import AddPod


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    address: str
    service_account: str
    netns_fd: int
    trust_domain: str = "cluster.local"
    # Listening sockets the node agent made (and keeps a copy of); empty: ztunnel binds.
    listeners: tuple[socket.socket, ...] = field(default=(), compare=False, repr=False)
    # Built once: every connection's labels and logs name it, and a string per
    # connection is memory an idle connection holds.
    identity: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", workload_identity(self.trust_domain, self.namespace,
                                                               self.service_account))

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_id(self) -> tuple[int, int]:
        return podsockets.netns_identity(self.netns_fd)

    def socket_factory(self, family: int = socket.AF_INET) -> socket.socket:
        return netns.socket_in(self.netns_fd, family)

    @classmethod
    def from_message(cls, msg: AddPod, netns_fd: int, listener_fds: list[int], trust_domain: str) -> "PodInfo":
        """Takes ownership of `listener_fds` (closed when they fail their checks)."""
        try:
            listeners = podsockets.adopt(listener_fds, msg.listeners, netns_fd)
        except (OSError, ValueError) as exc:
            raise ValueError(f"add for {msg.uid}: {exc}") from None
        return cls(namespace=msg.namespace, name=msg.name, address=msg.address,
                   service_account=msg.service_account, netns_fd=netns_fd, trust_domain=trust_domain,
                   listeners=tuple(listeners))

    def close(self) -> None:
        for sock in self.listeners:
            sock.close()

    def dump(self) -> dict[str, Any]:
        return {"uid": self.uid, "address": self.address, "identity": self.identity}
