"""The control-plane API's messages (docs/internals.md), sans-IO: built and parsed here
for both the control plane (controlplane/api.py) and the data plane (meshcore.cpclient).

One request per mTLS connection, JSON lines (meshcore.jsonlines frames them):
- `SignRequest` -> `SignReply` or `ErrorReply`
- `WatchRequest` (a subscriber: a node, or a waypoint) -> `Snapshot`, then `Delta`s and
  `Ping`s, or an `ErrorReply`.
Objects in and out are dicts (what jsonlines reads and writes); a missing or mistyped
field is a `WireError` that names the message and the field. Unknown fields are ignored
so either side can be upgraded first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from . import WireError
from .. import jsonlines

# Subscriber kinds: what a watch is for, and so which view the control plane serves.
NODE, WAYPOINT = "node", "waypoint"
SUBSCRIBER_KINDS = (NODE, WAYPOINT)


def _get(obj: dict[str, Any], key: str, what: str, want: type | tuple, *, optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise WireError(f"{what} is missing field {key!r}")
    value = obj[key]
    if not isinstance(value, want) or isinstance(value, bool) and want is int:
        names = want.__name__ if isinstance(want, type) else " or ".join(t.__name__ for t in want)
        raise WireError(f"{what}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


# ---- requests (data plane -> control plane) -------------------------------------------
@dataclass(frozen=True)
class SignRequest:
    csr: str  # PEM
    token: str | None = None  # in a cluster: the node's ServiceAccount token (controlplane/tokenreview.py)

    def to_dict(self) -> dict[str, Any]:
        return _with_token({"op": "sign", "csr": self.csr}, self.token)


@dataclass(frozen=True)
class WatchRequest:
    """A subscription. `name` is the node's name, or the waypoint's "<ns>/<name>"; None:
    the one the caller's credential names. `since`: the last version applied."""
    kind: str = NODE
    name: str | None = None
    since: int | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SUBSCRIBER_KINDS:
            raise WireError(f"watch request: field 'subscriber' must be one of {', '.join(SUBSCRIBER_KINDS)}, "
                            f"got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.kind == NODE:
            # The node form predates subscriber kinds: every control plane understands it.
            return _with_token({"op": "watch", "node": self.name, "since": self.since}, self.token)
        return _with_token({"op": "watch", "subscriber": self.kind, "name": self.name, "since": self.since}, self.token)


def _with_token(obj: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        obj["token"] = token
    return obj


Request = Union[SignRequest, WatchRequest]


def parse_request(obj: dict[str, Any]) -> Request:
    op = obj.get("op")
    if op == "sign":
        return SignRequest(csr=_get(obj, "csr", "sign request", str),
                           token=_get(obj, "token", "sign request", str, optional=True))
    if op == "watch":
        since = _get(obj, "since", "watch request", int, optional=True)
        token = _get(obj, "token", "watch request", str, optional=True)
        if "subscriber" in obj:
            kind = _get(obj, "subscriber", "watch request", str)
            return WatchRequest(kind, _get(obj, "name", "watch request", str, optional=True), since, token)
        return WatchRequest(NODE, _get(obj, "node", "watch request", str, optional=True), since, token)
    raise WireError(f"unknown op {op!r} (expected sign or watch)")


# ---- replies and events (control plane -> data plane) ---------------------------------
@dataclass(frozen=True)
class ErrorReply:
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"ok": False, "error": self.error}


@dataclass(frozen=True)
class SignReply:
    chain: tuple[str, ...]  # leaf first, PEM
    roots: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, "chain": list(self.chain), "roots": list(self.roots)}


@dataclass(frozen=True)
class Snapshot:
    version: int
    resources: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "snapshot", "version": self.version, "resources": list(self.resources)}


@dataclass(frozen=True)
class Delta:
    version: int
    upserts: tuple[dict[str, Any], ...]
    deletes: tuple[tuple[str, str, str], ...]  # resource keys: (kind, namespace or "", name)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "delta", "version": self.version, "upserts": list(self.upserts),
                "deletes": [list(k) for k in self.deletes]}


@dataclass(frozen=True)
class Ping:
    version: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ping", "version": self.version}


Event = Union[Snapshot, Delta, Ping, ErrorReply]


def _error(obj: dict[str, Any], what: str) -> ErrorReply | None:
    if obj.get("ok") is False:
        return ErrorReply(str(_get(obj, "error", what, str, optional=True) or "no reason given"))
    return None


def parse_sign_reply(obj: dict[str, Any]) -> SignReply | ErrorReply:
    err = _error(obj, "sign reply")
    if err is not None:
        return err
    chain, roots = _get(obj, "chain", "sign reply", list), _get(obj, "roots", "sign reply", list)
    if not chain or not all(isinstance(c, str) for c in chain + roots):
        raise WireError("sign reply: field 'chain' must be a non-empty list of PEM strings, 'roots' a list")
    return SignReply(tuple(chain), tuple(roots))


def parse_event(obj: dict[str, Any]) -> Event:
    err = _error(obj, "watch reply")
    if err is not None:
        return err
    kind = obj.get("type")
    what = f"watch {kind} message"
    if kind not in ("snapshot", "delta", "ping"):
        raise WireError(f"watch message has unknown type {kind!r} (expected snapshot, delta or ping)")
    version = _get(obj, "version", what, int)
    if kind == "ping":
        return Ping(version)
    if kind == "snapshot":
        return Snapshot(version, tuple(_dicts(obj, "resources", what)))
    deletes = []
    for i, key in enumerate(_get(obj, "deletes", what, list, optional=True) or []):
        if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
            raise WireError(f"{what}: field 'deletes[{i}]' must be [kind, namespace, name], got {key!r}")
        deletes.append(tuple(key))
    return Delta(version, tuple(_dicts(obj, "upserts", what)), tuple(deletes))


def _dicts(obj: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    items = _get(obj, key, what, list, optional=True) or []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise WireError(f"{what}: field '{key}[{i}]' must be a resource object, got {type(item).__name__}")
    return items


def encode(msg: Request | SignReply | Event) -> bytes:
    """One JSON line."""
    return jsonlines.encode(msg.to_dict())
