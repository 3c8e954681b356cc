"""OTLP/HTTP trace export, written by hand (docs/internals.md "waypoint tracing").

The encoder writes `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest` in
protobuf's wire format (the OTLP/HTTP default, `Content-Type: application/x-protobuf`),
with only the fields a server span needs. Doing it here rather than importing the
opentelemetry SDK (and protobuf) keeps the waypoint inside its 45 MiB idle budget: the
whole export path is a few hundred lines of bytes. Tests decode the output with the
official `opentelemetry-proto` package, so a field number or wire type that drifted from
the .proto files would fail there.

`post` sends one export over its own HTTP/1.1 connection (h11), http or https: exports
leave at most once per batch interval, so a kept-alive connection would save little and
would need its own staleness handling.
"""
from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass
from typing import Iterable, Union
from urllib.parse import urlsplit

import h11
import trio

Value = Union[str, bool, int, float]

# Span.SpanKind and Status.StatusCode (opentelemetry/proto/trace/v1/trace.proto)
KIND_SERVER = 2
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
# Span.flags: the W3C trace flags in the low byte, then "is the parent remote" and its "known" bit
FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE = 0x100, 0x200
TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class SpanRecord:
    trace_id: bytes              # 16 bytes
    span_id: bytes               # 8 bytes
    parent_span_id: bytes        # 8 bytes, or b"" for a root span
    name: str
    start_ns: int
    end_ns: int
    attributes: tuple[tuple[str, Value], ...] = ()
    kind: int = KIND_SERVER
    status: int = STATUS_UNSET
    status_message: str = ""
    trace_state: str = ""
    flags: int = 0


# ---- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) -------------
_SMALL = [bytes((i,)) for i in range(128)]   # most varints are one byte: tags, short lengths


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    n &= (1 << 64) - 1          # int64: negative numbers as their 64-bit two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, embedded messages."""
    return _tag(field, 2) + _varint(len(payload)) + payload if payload else b""


def _message(field: int, payload: bytes) -> bytes:
    """An embedded message, written even when empty (presence matters for messages)."""
    return _tag(field, 2) + _varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _bytes(field, s.encode())


def _uint(field: int, n: int) -> bytes:
    return _tag(field, 0) + _varint(n) if n else b""


def _fixed64(field: int, n: int) -> bytes:
    return _tag(field, 1) + struct.pack("<Q", n)


def _fixed32(field: int, n: int) -> bytes:
    return _tag(field, 5) + struct.pack("<I", n) if n else b""


def any_value(v: Value) -> bytes:
    """common.v1.AnyValue: string_value 1, bool_value 2, int_value 3, double_value 4."""
    if isinstance(v, bool):
        return _tag(2, 0) + _varint(int(v))
    if isinstance(v, int):
        return _tag(3, 0) + _varint(v)
    if isinstance(v, float):
        return _tag(4, 1) + struct.pack("<d", v)
    return _message(1, str(v).encode())


_KEYS: dict[str, bytes] = {}   # the attribute names are a small fixed set: encode each once


def key_value(key: str, v: Value) -> bytes:
    """common.v1.KeyValue: key 1, value 2."""
    k = _KEYS.get(key)
    if k is None:
        k = _str(1, key)
        if len(_KEYS) < 256:
            _KEYS[key] = k
    return k + _message(2, any_value(v))


def _attributes(field: int, attrs: Iterable[tuple[str, Value]]) -> bytes:
    return b"".join(_message(field, key_value(k, v)) for k, v in attrs)


def encode_span(s: SpanRecord) -> bytes:
    """trace.v1.Span: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
    start 7, end 8 (fixed64), attributes 9, status 15 (message 2, code 3), flags 16 (fixed32)."""
    status = _str(2, s.status_message) + _uint(3, s.status)
    return (_bytes(1, s.trace_id) + _bytes(2, s.span_id) + _str(3, s.trace_state) + _bytes(4, s.parent_span_id)
            + _str(5, s.name) + _uint(6, s.kind) + _fixed64(7, s.start_ns) + _fixed64(8, s.end_ns)
            + _attributes(9, s.attributes) + (_message(15, status) if status else b"") + _fixed32(16, s.flags))


def encode_request(resource: Iterable[tuple[str, Value]], scope: tuple[str, str], spans: Iterable[SpanRecord]) -> bytes:
    """ExportTraceServiceRequest{resource_spans 1: ResourceSpans{resource 1: Resource{attributes 1},
    scope_spans 2: ScopeSpans{scope 1: InstrumentationScope{name 1, version 2}, spans 2}}}."""
    scope_msg = _str(1, scope[0]) + _str(2, scope[1])
    scope_spans = _message(1, scope_msg) + b"".join(_message(2, encode_span(s)) for s in spans)
    resource_spans = _message(1, _attributes(1, resource)) + _message(2, scope_spans)
    return _message(1, resource_spans)


# ---- the HTTP side ------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str, *, append_path: bool) -> "Endpoint":
        """append_path: `url` is a base (OTEL_EXPORTER_OTLP_ENDPOINT's meaning), /v1/traces goes
        after its path unless it already ends there; otherwise (the signal-specific variable)
        the URL is used as it is. ValueError says what is wrong with it."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host (OTLP/HTTP, e.g. "
                             f"http://otel-collector.observability:4318)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        path = parts.path or "/"
        if append_path and not path.rstrip("/").endswith(TRACES_PATH):
            path = path.rstrip("/") + TRACES_PATH
        if parts.query:
            path += "?" + parts.query
        return cls(f"{parts.scheme}://{parts.netloc}{path}", parts.scheme, parts.hostname, port, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class ExportFailed(Exception):
    pass


async def post(ep: Endpoint, body: bytes, headers: tuple[tuple[str, str], ...] = (), timeout: float = 10.0,
               ssl_context: ssl.SSLContext | None = None) -> int:
    """POST one export; the collector's status (2xx: accepted, partial successes included).
    ExportFailed when it cannot be reached or answers nonsense."""
    try:
        with trio.fail_after(timeout):
            if ep.scheme == "https":
                stream = await trio.open_ssl_over_tcp_stream(ep.host, ep.port,
                                                            ssl_context=ssl_context or ssl.create_default_context())
            else:
                stream = await trio.open_tcp_stream(ep.host, ep.port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                head = [("host", ep.authority), ("content-type", "application/x-protobuf"),
                        ("content-length", str(len(body))), ("user-agent", "trellis-waypoint"), *headers]
                out = conn.send(h11.Request(method="POST", target=ep.path, headers=head))
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.Response):
                        return ev.status_code
                    elif isinstance(ev, h11.ConnectionClosed):
                        raise ExportFailed("the collector closed the connection without answering")
    except trio.TooSlowError:
        raise ExportFailed(f"no answer within {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise ExportFailed(str(exc) or type(exc).__name__) from None
