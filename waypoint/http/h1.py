"""HTTP/1.1 over h11, sans-IO, turned into the shared events (hypercorn's protocol/h11.py
shape): `receive_data(bytes)` then `events()`; `send(event) -> bytes`.

Hardening, on top of h11's own checks (bad framing, obsolete line folding, conflicting
Content-Length values, any Transfer-Encoding but chunked -> 501):
- a message with both Content-Length and Transfer-Encoding is refused (400), never
  guessed at: RFC 9112 6.3 lets a server reject it and that is what stops smuggling when
  the next hop might frame it the other way;
- the header block is bounded in bytes (431, h11's max_incomplete_event_size) and in count
  (431 past MAX_HEADERS fields).
A refusal is one `ProtocolError(status, message)`; the caller answers with
`error_response()` and closes. Nothing here raises on the peer's bytes.
"""
from __future__ import annotations

import re
from http import HTTPStatus

import h11

from .events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, simple_response

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


def _decode(headers) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("ascii").lower(), v.decode("latin-1")) for k, v in headers)


def _encode(headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("ascii"), v.encode("latin-1")) for k, v in headers]


def _framing_problem(headers, max_bytes: int = MAX_HEADER_BYTES) -> tuple[int, str] | None:
    if len(headers) > MAX_HEADERS:
        return 431, f"too many header fields ({len(headers)}, at most {MAX_HEADERS})"
    size = sum(len(k) + len(v) + 4 for k, v in headers)
    if size > max_bytes:   # h11 bounds only a block still incomplete; one read can bring it all
        return 431, f"header fields too large ({size} bytes, at most {max_bytes})"
    names = {k for k, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return 400, "both Content-Length and Transfer-Encoding: refused (request smuggling)"
    return None


_AUTHORITY = re.compile(rb"^[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*$")


def _host_problem(headers) -> tuple[int, str] | None:
    """RFC 9112 3.2: an invalid Host gets 400 (h11 refuses a second Host itself, and joins an
    obsolete folded line into the previous value, which this catches)."""
    hosts = [v for k, v in headers if k == b"host"]
    if hosts and not _AUTHORITY.match(hosts[0]):
        return 400, f"invalid Host header {hosts[0][:64].decode('latin-1')!r}"
    return None


class _Side:
    def __init__(self, role, max_header_bytes: int):
        self.conn = h11.Connection(role, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.failed: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if self.failed is None:
            self.conn.receive_data(data)

    def _fail(self, status: int, message: str) -> list:
        self.failed = ProtocolError(status, message)
        return [self.failed]

    def events(self) -> list:
        """Everything the bytes so far complete, in order."""
        out: list = []
        while self.failed is None:
            try:
                ev = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                return out + self._fail(exc.error_status_hint, f"malformed HTTP/1.1: {exc}")
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()   # keep-alive: the next exchange may be buffered
                    continue
                break
            if isinstance(ev, h11.ConnectionClosed):
                out.append(ConnectionClosed("peer closed the connection"))
                break
            converted = self._convert(ev)
            if isinstance(converted, ProtocolError):
                self.failed = converted
            out.append(converted)
        return out

    def _data_or_end(self, ev):
        if isinstance(ev, h11.Data):
            return Data(bytes(ev.data))
        if isinstance(ev, h11.EndOfMessage):
            return EndOfMessage(_decode(ev.headers))
        raise AssertionError(f"unexpected h11 event {ev!r}")

    def _send(self, ev) -> bytes:
        out = self.conn.send(ev) or b""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return out

    @property
    def keep_alive(self) -> bool:
        return self.conn.our_state not in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) and self.failed is None


class HTTP1Server(_Side):
    """The waypoint's side of a client's HTTP/1.1 connection."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES):
        super().__init__(h11.SERVER, max_header_bytes)
        self.responding = False

    def _convert(self, ev):
        if isinstance(ev, h11.Request):
            problem = _framing_problem(ev.headers, self.max_header_bytes) or _host_problem(ev.headers)
            if problem:
                return ProtocolError(*problem)
            headers = _decode(ev.headers)
            host = next((v for k, v in headers if k == "host"), "")
            try:
                return Request(ev.method.decode("ascii"), ev.target.decode("latin-1"), host, headers,
                               http_version=ev.http_version.decode("ascii"))
            except ValueError as exc:
                return ProtocolError(400, f"bad request: {exc}")
        return self._data_or_end(ev)

    def send(self, ev) -> bytes:
        if isinstance(ev, Response) and ev.status < 200:   # 100 Continue, 103 Early Hints
            return self._send(h11.InformationalResponse(status_code=ev.status, headers=_encode(ev.headers)))
        if isinstance(ev, Response):
            self.responding = True
            return self._send(h11.Response(status_code=ev.status, headers=_encode(ev.headers),
                                           reason=ev.reason.encode("latin-1")))
        if isinstance(ev, Data):
            return self._send(h11.Data(data=ev.data))
        if isinstance(ev, EndOfMessage):
            self.responding = False
            return self._send(h11.EndOfMessage(headers=_encode(ev.trailers)))
        raise TypeError(f"an HTTP/1.1 server sends Response, Data or EndOfMessage, not {ev!r}")

    def error_response(self, err: ProtocolError) -> bytes:
        """The answer to a refused request (then close), if a response can still be sent.
        Framed by hand: h11's connection is in ERROR by now and will not frame anything."""
        if self.responding:
            return b""   # a response is half sent: closing is the only honest end
        resp, data, _ = simple_response(err.status, err.message, (("connection", "close"),))
        try:
            reason = HTTPStatus(err.status).phrase
        except ValueError:
            reason = ""
        head = f"HTTP/1.1 {err.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in resp.headers)
        return head.encode("latin-1") + b"\r\n" + data.data


class HTTP1Client(_Side):
    """The waypoint's side of an HTTP/1.1 connection to a backend (keep-alive reused)."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES):
        super().__init__(h11.CLIENT, max_header_bytes)

    def _convert(self, ev):
        if isinstance(ev, (h11.Response, h11.InformationalResponse)):
            problem = _framing_problem(ev.headers, self.max_header_bytes)
            if problem:
                return ProtocolError(502, f"backend response refused: {problem[1]}")
            return Response(ev.status_code, _decode(ev.headers), ev.reason.decode("latin-1"),
                            ev.http_version.decode("ascii"))
        return self._data_or_end(ev)

    def send(self, ev) -> bytes:
        if isinstance(ev, Request):
            headers = ev.headers if any(k == "host" for k, _ in ev.headers) else (("host", ev.authority),) + ev.headers
            return self._send(h11.Request(method=ev.method, target=ev.target, headers=_encode(headers)))
        if isinstance(ev, Data):
            return self._send(h11.Data(data=ev.data))
        if isinstance(ev, EndOfMessage):
            return self._send(h11.EndOfMessage(headers=_encode(ev.trailers)))
        raise TypeError(f"an HTTP/1.1 client sends Request, Data or EndOfMessage, not {ev!r}")

    def events(self) -> list:
        out = super().events()
        if self.failed and self.failed.status < 500:   # the backend broke HTTP: a gateway error to the client
            self.failed = ProtocolError(502, self.failed.message)
            out[-1] = self.failed
        return out
