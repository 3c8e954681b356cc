"""The node agent <-> ztunnel handoff (ZDS-like), sans-IO: messages, encode, decode.

One JSON object per SOCK_SEQPACKET packet; file descriptors ride along as SCM_RIGHTS in
an order each message defines (`fd_roles`). Every request gets one `Reply`, which may
carry fds too (ztunnel handing a pod's listening sockets back to a restarted node agent).
Fields a newer peer adds are ignored, so either side can be upgraded first; a missing or
mistyped field is a `WireError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from .packets import Codec, ancillary, fds_from  # noqa: F401  (ancillary, fds_from: part of this API)
from .packets import key as _key

MAX_MESSAGE = 64 * 1024  # bytes of JSON per packet
MAX_FDS = 8              # fds per packet: an add carries the netns and its listeners


@dataclass(frozen=True)
class Hello:
    """First message on every connection. fds: [origdst BPF map]."""
    OP: ClassVar[str] = "hello"
    node: str = _key("node")

    def fd_roles(self) -> list[str]:
        return ["the origdst BPF map"]


@dataclass(frozen=True)
class AddPod:
    """Serve a pod. fds: [netns, *listening sockets]; `listeners` names each socket's
    address ("127.0.0.1:<outbound port>") in fd order. With no listeners ztunnel binds its own."""
    OP: ClassVar[str] = "add"
    namespace: str = _key("namespace")
    name: str = _key("name")
    address: str = _key("address")
    service_account: str = _key("serviceAccount", "default", required=False)
    listeners: tuple[str, ...] = _key("listeners", (), required=False)

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"

    def fd_roles(self) -> list[str]:
        return ["the pod netns", *(f"the listener {a}" for a in self.listeners)]


@dataclass(frozen=True)
class RemovePod:
    OP: ClassVar[str] = "remove"
    uid: str = _key("uid")

    def fd_roles(self) -> list[str]:
        return []


@dataclass(frozen=True)
class SnapshotSent:
    """Every pod the node agent has is now sent (Istio's SnapshotSent): pods ztunnel
    still serves that were not added on this connection are gone, and it drops them."""
    OP: ClassVar[str] = "snapshotSent"

    def fd_roles(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Reply:
    """The answer to every request. `listeners` (fds in that order) only on an add."""
    ok: bool = _key("ok", True)
    error: str = _key("error", "", required=False)
    listeners: tuple[str, ...] = _key("listeners", (), required=False)

    def fd_roles(self) -> list[str]:
        return [f"the listener {a}" for a in self.listeners]


Request = Union[Hello, AddPod, RemovePod, SnapshotSent]
REQUESTS: dict[str, type] = {cls.OP: cls for cls in (Hello, AddPod, RemovePod, SnapshotSent)}


CODEC = Codec("ZDS", (Hello, AddPod, RemovePod, SnapshotSent), max_message=MAX_MESSAGE, max_fds=MAX_FDS)


def encode(msg: Request | Reply) -> bytes:
    return CODEC.encode(msg)


def decode(data: bytes, nfds: int) -> Request:
    """A request, checked against the number of fds that came with it."""
    return CODEC.decode(data, nfds)


def decode_reply(data: bytes, nfds: int = 0) -> Reply:
    reply = CODEC.build(Reply, CODEC.load(data, "reply"), "reply")
    CODEC.check_fds(reply, nfds)
    return reply
