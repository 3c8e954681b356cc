"""The waypoint's own HTTP events, one set for HTTP/1.1 and HTTP/2 (hypercorn's and
mitmproxy's shape): small frozen dataclasses, validated on construction. Header names are
lowercase `str`, values `str` (latin-1, so any byte survives a round trip), in wire order.

`stream_id` is 1 for every HTTP/1.1 message (one exchange at a time on a connection) and the
HTTP/2 stream id otherwise, so the code above sees keep-alive and streams alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

Headers = tuple[tuple[str, str], ...]
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-z]+").fullmatch    # compiled: this runs for every message
_BAD_VALUE = re.compile(r"[\r\n\0]").search


def _check_headers(headers: Headers) -> None:
    for name, value in headers:
        if not _NAME(name):
            raise ValueError(f"header name {name!r} is not a lowercase token")
        if _BAD_VALUE(value):
            raise ValueError(f"header {name!r} has a CR, LF or NUL in its value")


def header(headers: Headers, name: str) -> str | None:
    """All values of `name` joined with ", " (RFC 9110 5.3), None when absent."""
    values = [v for k, v in headers if k == name]
    return ", ".join(values) if values else None


def without(headers: Headers, *names: str) -> Headers:
    drop = {n.lower() for n in names}
    return tuple((k, v) for k, v in headers if k not in drop)


@dataclass(frozen=True)
class Request:
    method: str
    target: str                 # origin-form: path and query, as received
    authority: str              # Host / :authority
    headers: Headers = ()
    scheme: str = "http"
    http_version: str = "1.1"   # "1.0", "1.1" or "2"
    stream_id: int = 1

    def __post_init__(self):
        if not self.method or not set(self.method.lower()) <= _TOKEN:
            raise ValueError(f"method {self.method!r} is not a token")
        if not (self.target.startswith("/") or self.target == "*" or self.method == "CONNECT"):
            raise ValueError(f"request target {self.target!r} is not in origin form")
        _check_headers(self.headers)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def host(self) -> str:
        """The authority without its port (IPv6 brackets kept)."""
        a = self.authority
        if a.startswith("["):
            return a[:a.index("]") + 1] if "]" in a else a
        return a.rsplit(":", 1)[0] if ":" in a else a

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def is_grpc(self) -> bool:
        ct = self.header("content-type") or ""
        return ct == "application/grpc" or ct.startswith(("application/grpc+", "application/grpc;"))

    def with_(self, **changes) -> "Request":
        return replace(self, **changes)

    def trusted(self, **changes) -> "Request":
        """`with_` without validation, for changes the waypoint made itself from fields that
        were validated already (the outgoing request's headers): the hot path's copy."""
        return _copy(self, changes)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers = ()
    reason: str = ""
    http_version: str = "1.1"
    stream_id: int = 1

    def __post_init__(self):
        if not 100 <= self.status <= 999:
            raise ValueError(f"status {self.status} is not a 3-digit code")
        _check_headers(self.headers)

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


@dataclass(frozen=True)
class Data:
    data: bytes
    stream_id: int = 1


@dataclass(frozen=True)
class EndOfMessage:
    trailers: Headers = ()
    stream_id: int = 1


@dataclass(frozen=True)
class StreamReset:
    """The peer abandoned one exchange (HTTP/2 RST_STREAM); the connection lives on."""
    stream_id: int
    error_code: int = 0


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the connection (HTTP/2 GOAWAY, HTTP/1 EOF between messages)."""
    reason: str = ""


@dataclass(frozen=True)
class ProtocolError:
    """The peer broke the protocol: answer `status` (400, 431, ...) if possible, then close."""
    status: int
    message: str
    stream_id: int = 1


def _copy(obj, changes: dict):
    new = object.__new__(type(obj))
    d = new.__dict__
    d.update(obj.__dict__)
    d.update(changes)
    return new


def trusted_response(status: int, headers: Headers, reason: str = "", http_version: str = "1.1") -> Response:
    """A Response whose fields are known valid (parsed by h1wire, or copied from one that
    was validated): built without `__post_init__`'s per-header regexes."""
    new = object.__new__(Response)
    new.__dict__.update(status=status, headers=headers, reason=reason, http_version=http_version, stream_id=1)
    return new


def trusted_request(method: str, target: str, authority: str, headers: Headers, http_version: str = "1.1") -> Request:
    """A Request from h1wire's parser, which already holds method and field names to tokens
    and values free of CR, LF and NUL (its regex): only the target's form is checked here."""
    if not (target.startswith("/") or target == "*" or method == "CONNECT"):
        raise ValueError(f"request target {target!r} is not in origin form")
    new = object.__new__(Request)
    new.__dict__.update(method=method, target=target, authority=authority, headers=headers, scheme="http",
                        http_version=http_version, stream_id=1)
    return new


def simple_response(status: int, body: str, extra: Headers = (), stream_id: int = 1) -> tuple[Response, Data, EndOfMessage]:
    """A complete short answer the waypoint makes itself (404, 429, 503, ...): text/plain."""
    payload = (body + "\n").encode()
    headers = (("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(payload)))) + extra
    return Response(status, headers, stream_id=stream_id), Data(payload, stream_id), EndOfMessage(stream_id=stream_id)


# RFC 9110 7.6.1: meaningful for one hop only; a proxy drops them (and whatever Connection names).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
                        "proxy-authenticate", "proxy-authorization", "trailer"})


def end_to_end(headers: Headers, drop: frozenset = HOP_BY_HOP) -> Headers:
    """The headers a proxy forwards: hop-by-hop ones and those Connection lists removed, except
    `te: trailers` (RFC 9113 8.2.2), which gRPC needs end to end. `drop`: these and more, if given."""
    for k, v in headers:
        if k == "connection":
            drop = drop | {t.strip().lower() for t in v.split(",")}
    return tuple([(k, v) for k, v in headers if k not in drop or (k == "te" and v.strip().lower() == "trailers")])
