"""JSON-per-packet messages with file descriptors, sans-IO: the codec behind `zds` (node
agent <-> ztunnel) and `workers` (ztunnel's owner <-> its worker processes).

A message is a frozen dataclass with a ClassVar `OP` and fields declared with `key()`
(the JSON key, required or not). One message is one SOCK_SEQPACKET packet; its fds ride
along as SCM_RIGHTS in the order `fd_roles()` names. Unknown keys are ignored so either
side can be upgraded first; a missing or mistyped field is a `WireError` naming it.
Bulky payloads (a config snapshot, a metrics scrape) travel as a sealed-size memfd
(`body_fd`/`read_body`) instead of bytes in the packet.
"""
from __future__ import annotations

import array
import json
import os
import socket
from dataclasses import field, fields
from typing import Any

from . import WireError

OP = "op"   # the message's kind; every other key is a dataclass field


def key(name: str, default: Any = None, *, required: bool = True):
    """A dataclass field carried under JSON key `name`."""
    meta = {"key": name, "required": required}
    if default is None and required:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def _check(value: Any, want: str, what: str, k: str) -> Any:
    if want == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WireError(f"{what}: field {k!r} must be a list of strings, got {value!r}")
        return tuple(value)
    if want in ("int | None", "int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif want == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
    elif want == "bool":
        ok, kind = isinstance(value, bool), "bool"
    else:  # str
        ok, kind = isinstance(value, str) and bool(value), "a non-empty string"
    if not ok:
        raise WireError(f"{what}: field {k!r} must be {kind}, got {value!r}")
    return value


class Codec:
    """Encode and decode one protocol's messages (`requests`: the kinds that carry an op)."""

    def __init__(self, name: str, requests: tuple[type, ...], *, max_message: int = 64 * 1024,
                 max_fds: int = 8) -> None:
        self.name, self.max_message, self.max_fds = name, max_message, max_fds
        self.requests = {cls.OP: cls for cls in requests}

    def what(self, msg) -> str:
        return f"{self.name} {getattr(msg, 'OP', 'reply')} message"

    def encode(self, msg) -> bytes:
        out: dict[str, Any] = {OP: msg.OP} if hasattr(msg, "OP") else {}
        for f in fields(msg):
            value = getattr(msg, f.name)
            if f.metadata["required"] or value != f.default:
                out[f.metadata["key"]] = list(value) if isinstance(value, tuple) else value
        data = json.dumps(out, separators=(",", ":")).encode()
        if len(data) > self.max_message:
            raise WireError(f"{self.what(msg)} is {len(data)} bytes, over the limit of {self.max_message}")
        return data

    def load(self, data: bytes, what: str) -> dict[str, Any]:
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise WireError(f"{self.name} {what} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise WireError(f"{self.name} {what} is not a JSON object: {obj!r:.80}")
        return obj

    def build(self, cls, obj: dict[str, Any], what: str):
        kwargs = {}
        for f in fields(cls):
            k = f.metadata["key"]
            if k not in obj:
                if f.metadata["required"]:
                    raise WireError(f"{self.name} {what} is missing field {k!r} (got {sorted(obj)})")
                continue
            kwargs[f.name] = _check(obj[k], f.type, f"{self.name} {what}", k)
        return cls(**kwargs)

    def decode(self, data: bytes, nfds: int):
        """A request, checked against the number of fds that came with it."""
        obj = self.load(data, "message")
        op = obj.get(OP)
        cls = self.requests.get(op)
        if cls is None:
            raise WireError(f"{self.name} message has unknown {OP} {op!r}; expected one of {', '.join(self.requests)}")
        msg = self.build(cls, obj, f"{op} message")
        self.check_fds(msg, nfds)
        return msg

    def check_fds(self, msg, nfds: int) -> None:
        roles = msg.fd_roles()
        if nfds != len(roles):
            uid = f" for {msg.uid}" if hasattr(msg, "uid") else ""
            raise WireError(f"{self.what(msg)}{uid} needs {len(roles)} fd(s) ({', '.join(roles) or 'none'}), "
                            f"got {nfds}")

    def ancdata_space(self) -> int:
        return socket.CMSG_SPACE(self.max_fds * 4)


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


def body_fd(data: bytes) -> int:
    """A memfd holding `data`, positioned at 0 (the caller sends and then closes it)."""
    fd = os.memfd_create("trellis-body", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_body(fd: int, limit: int = 256 * 1024 * 1024) -> bytes:
    """All of a received body fd from the start (does not close it)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise WireError(f"message body of {size} bytes is over the limit of {limit}")
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)
