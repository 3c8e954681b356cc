"""ztunnel's owner process <-> its worker processes, sans-IO (docs/internals.md "ztunnel on N cores").

One SOCK_SEQPACKET socketpair per worker, made by the owner; each packet is one JSON
message (meshcore.wire.packets), fds as SCM_RIGHTS. The owner holds what is node-wide
(certificates, the control-plane watch, the node agent's handoff) and tells every worker:

  owner -> worker   OrigDst + [map fd]        the node agent's origdst map (each new hello)
                    Snapshot + [body memfd]   the config: every resource (to a new worker), then
                                              only what changed
                    Certificate               a workload key and chain (issued or renewed)
                    zds.AddPod + [netns, *listeners]   serve a pod on these sockets
                    zds.RemovePod             drain a pod
                    Scrape                    ask for counters and pod states
                    Ping                      liveness, every second
  worker -> owner   Stats + [body memfd]      the answer: {"metrics": text exposition,
                                              "pods": [...], "certs": [...], "pid": N}
                    Pong                      the answer to Ping (same seq): the worker's event
                                              loop runs and took in everything sent before it

Nothing is acknowledged: the owner replays everything a worker needs when it starts one,
so a replaced worker converges to the same state; the socketpair closing means the peer is
gone. Keys cross only this socketpair between two processes of one ztunnel on one node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from . import zds
from .packets import Codec, body_fd, read_body  # noqa: F401  (body helpers: part of this API)
from .packets import key


@dataclass(frozen=True)
class OrigDst:
    OP: ClassVar[str] = "origdst"

    def fd_roles(self) -> list[str]:
        return ["the origdst BPF map"]


@dataclass(frozen=True)
class Snapshot:
    """`seq` orders snapshots (a worker ignores one older than what it has); `version`
    is the control plane's (-1: none). `base` -1: the body is every resource, a JSON list;
    else the body is what changed since snapshot `base`, {"upserts": [resource, ...],
    "deletes": [[kind, namespace, name], ...]} (a worker that lacks `base` is out of step)."""
    OP: ClassVar[str] = "snapshot"
    seq: int = key("seq")
    version: int = key("version", -1, required=False)
    base: int = key("base", -1, required=False)

    def fd_roles(self) -> list[str]:
        return ["the snapshot body"]


@dataclass(frozen=True)
class Certificate:
    """A workload certificate the owner holds; `received` (ISO 8601) is when it arrived,
    from which renewal and the admin dump count."""
    OP: ClassVar[str] = "certificate"
    identity: str = key("identity")
    key_pem: str = key("key")
    chain: tuple[str, ...] = key("chain")
    roots: tuple[str, ...] = key("roots")
    received: str = key("received")

    def fd_roles(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Scrape:
    OP: ClassVar[str] = "scrape"
    seq: int = key("seq")

    def fd_roles(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Stats:
    OP: ClassVar[str] = "stats"
    seq: int = key("seq")

    def fd_roles(self) -> list[str]:
        return ["the stats body"]


@dataclass(frozen=True)
class Ping:
    OP: ClassVar[str] = "ping"
    seq: int = key("seq")

    def fd_roles(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Pong:
    OP: ClassVar[str] = "pong"
    seq: int = key("seq")

    def fd_roles(self) -> list[str]:
        return []


Message = Union[OrigDst, Snapshot, Certificate, zds.AddPod, zds.RemovePod, Scrape, Stats, Ping, Pong]
CODEC = Codec("worker", (OrigDst, Snapshot, Certificate, zds.AddPod, zds.RemovePod, Scrape, Stats, Ping, Pong),
              max_message=zds.MAX_MESSAGE, max_fds=zds.MAX_FDS)


def encode(msg: Message) -> bytes:
    return CODEC.encode(msg)


def decode(data: bytes, nfds: int) -> Message:
    return CODEC.decode(data, nfds)
