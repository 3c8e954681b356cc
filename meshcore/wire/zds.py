"""The node agent <-> ztunnel handoff (ZDS-like), sans-IO: messages, encode, decode.

One JSON object per SOCK_SEQPACKET packet; file descriptors ride along as SCM_RIGHTS in
an order each message defines (`fd_roles`). Every request gets one `Reply`, which may
carry fds too (ztunnel handing a pod's listening sockets back to a restarted node agent).
Fields a newer peer adds are ignored, so either side can be upgraded first; a missing or
mistyped field is a `WireError` naming it.
"""
from __future__ import annotations

import array
import json
import socket
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Union

from . import WireError

MAX_MESSAGE = 64 * 1024  # bytes of JSON per packet
MAX_FDS = 8              # fds per packet: an add carries the netns and its listeners

# The message's kind; every other key is a dataclass field, spelled as the `key` metadata.
OP = "op"


def _key(name: str, default: Any = None, *, required: bool = True):
    meta = {"key": name, "required": required}
    if default is None and required:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


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


def _to_dict(msg) -> dict[str, Any]:
    out: dict[str, Any] = {OP: msg.OP} if hasattr(msg, "OP") else {}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if f.metadata["required"] or value != f.default:
            out[f.metadata["key"]] = list(value) if isinstance(value, tuple) else value
    return out


def encode(msg: Request | Reply) -> bytes:
    data = json.dumps(_to_dict(msg), separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"ZDS {_what(msg)} is {len(data)} bytes, over the limit of {MAX_MESSAGE}")
    return data


def _what(msg) -> str:
    return f"{getattr(msg, 'OP', 'reply')} message"


def _check(value: Any, want: type, what: str, key: str) -> Any:
    if want is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WireError(f"ZDS {what}: field {key!r} must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, want) or (want is str and not value):
        kind = "a non-empty string" if want is str else want.__name__
        raise WireError(f"ZDS {what}: field {key!r} must be {kind}, got {value!r}")
    return value


_TYPES = {"str": str, "bool": bool, "tuple[str, ...]": tuple}


def _from_dict(cls, obj: dict[str, Any], what: str):
    kwargs = {}
    for f in fields(cls):
        key = f.metadata["key"]
        if key not in obj:
            if f.metadata["required"]:
                raise WireError(f"ZDS {what} is missing field {key!r} (got {sorted(obj)})")
            continue
        kwargs[f.name] = _check(obj[key], _TYPES[f.type], what, key)
    return cls(**kwargs)


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise WireError(f"ZDS {what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(f"ZDS {what} is not a JSON object: {obj!r:.80}")
    return obj


def decode(data: bytes, nfds: int) -> Request:
    """A request, checked against the number of fds that came with it."""
    obj = _load(data, "message")
    op = obj.get(OP)
    cls = REQUESTS.get(op)
    if cls is None:
        raise WireError(f"ZDS message has unknown {OP} {op!r}; expected one of {', '.join(REQUESTS)}")
    msg = _from_dict(cls, obj, f"{op} message")
    _check_fds(msg, nfds)
    return msg


def decode_reply(data: bytes, nfds: int = 0) -> Reply:
    reply = _from_dict(Reply, _load(data, "reply"), "reply")
    _check_fds(reply, nfds)
    return reply


def _check_fds(msg, nfds: int) -> None:
    roles = msg.fd_roles()
    if nfds != len(roles):
        uid = f" for {msg.uid}" if isinstance(msg, AddPod) else ""
        raise WireError(f"ZDS {_what(msg)}{uid} needs {len(roles)} fd(s) ({', '.join(roles) or 'none'}), "
                        f"got {nfds}")


def ancillary(fds) -> list[tuple[int, int, bytes]]:
    """The sendmsg() ancillary data that carries `fds` as SCM_RIGHTS."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def fds_from(ancdata) -> list[int]:
    """The fds that arrived with a recvmsg() (the caller owns and closes them)."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return list(fds)
