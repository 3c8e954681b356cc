"""HTTP/1.1 connections, sans-IO, turned into the shared events (hypercorn's protocol/h11.py
shape): `receive_data(bytes)` then `events()`; `send(event) -> bytes`. The parsing is
h1wire.py's (strict, one find and one regex per head); h11 stays the reference the tests
fuzz it against.

A connection runs exchanges one after another (keep-alive): the next request is parsed only
once both sides finished the current one, as h11 does, so a pipelined request waits.
Hardening (all in h1wire): no smuggling (CL with TE, conflicting CL, TE other than chunked
-> 501, bad chunks, bare CR/LF, obsolete folding), the header block bounded in bytes and in
count (431), an invalid or missing Host (400). A refusal is one `ProtocolError(status,
message)`; the caller answers with `error_response()` and closes. Nothing here raises on
the peer's bytes.
"""
from __future__ import annotations

from http import HTTPStatus

from .events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, simple_response, \
    trusted_request, trusted_response
from .h1wire import WireError, find_head, parse_chunk_head, parse_request, parse_response, parse_trailers, \
    serialize_head

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
# what the parser is reading
HEAD, LENGTH, CHUNK_HEAD, CHUNK_DATA, CHUNK_END, TRAILERS, UNTIL_CLOSE, PAUSED, CLOSED = range(9)


class _Side:
    IDLE = HEAD   # a server reads the next request; a client waits until it sent one

    def __init__(self, max_header_bytes: int):
        self.max_header_bytes = max_header_bytes
        self.failed: ProtocolError | None = None
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.state = HEAD
        self.left = 0                 # body bytes still due (LENGTH, CHUNK_DATA)
        self.keep = True              # the connection may carry another exchange
        self.our_done = False         # we finished our message of this exchange
        self.their_done = False
        self.out_chunked = False      # how our body is framed
        self.out_nobody = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if self.failed is not None:
            return
        if not data:
            self.eof = True
        elif self.pos >= len(self.buf):
            self.buf, self.pos = data, 0
        else:
            self.buf, self.pos = self.buf[self.pos:] + data, 0

    def events(self) -> list:
        """Everything the bytes so far complete, in order."""
        out: list = []
        if self.failed is None:
            try:
                self._parse(out)
            except WireError as exc:
                self.failed = ProtocolError(exc.status, exc.message)
                out.append(self.failed)
        return out

    def _parse(self, out: list) -> None:
        while True:
            state, buf, pos = self.state, self.buf, self.pos
            if state == LENGTH or state == CHUNK_DATA:
                n = min(self.left, len(buf) - pos)
                if n:
                    out.append(Data(buf[pos:pos + n] if n != len(buf) else buf))
                    self.pos = pos = pos + n
                    self.left -= n
                if self.left:
                    if self.eof:
                        raise WireError(400, "peer closed the connection in the middle of a message body")
                    return
                if state == LENGTH:
                    self._end(out, ())
                else:
                    self.state = CHUNK_END
            elif state == HEAD:
                if pos >= len(buf):
                    if self.eof:
                        self.state = CLOSED
                        out.append(ConnectionClosed("peer closed the connection"))
                    return
                end = find_head(buf, pos, self.max_header_bytes)
                if end < 0:
                    if self.eof:
                        raise WireError(400, "peer closed the connection in the middle of a message head")
                    return
                self.pos = end + 4
                self._head(buf, pos, end, out)
            elif state == CHUNK_HEAD:
                got = parse_chunk_head(buf, pos)
                if got is None:
                    if self.eof:
                        raise WireError(400, "peer closed the connection in the middle of a chunked body")
                    return
                self.left, self.pos = got
                self.state = CHUNK_DATA if self.left else TRAILERS
            elif state == CHUNK_END:
                if len(buf) - pos < 2:
                    if self.eof:
                        raise WireError(400, "peer closed the connection in the middle of a chunked body")
                    return
                if buf[pos:pos + 2] != b"\r\n":
                    raise WireError(400, "malformed HTTP/1.1: chunk data not followed by CRLF")
                self.pos += 2
                self.state = CHUNK_HEAD
            elif state == TRAILERS:
                if buf[pos:pos + 2] == b"\r\n":
                    self.pos += 2
                    self._end(out, ())
                    continue
                end = find_head(buf, pos, self.max_header_bytes) if len(buf) - pos >= 2 else -1
                if end < 0:
                    if self.eof:
                        raise WireError(400, "peer closed the connection in the middle of the trailers")
                    return
                self.pos = end + 4
                self._end(out, tuple(parse_trailers(buf[pos:end].decode("latin-1"), MAX_HEADERS)))
            elif state == UNTIL_CLOSE:
                if pos < len(buf):
                    out.append(Data(buf[pos:] if pos else buf))
                    self.pos = len(buf)
                if not self.eof:
                    return
                self._end(out, ())
            else:   # PAUSED (the other side's message is not finished) or CLOSED
                return

    def _end(self, out: list, trailers) -> None:
        out.append(EndOfMessage(trailers))
        self.their_done = True
        self._maybe_next_cycle()

    def _maybe_next_cycle(self) -> None:
        if not self.their_done:
            return
        if not self.keep:
            self.state = CLOSED
        elif self.our_done:
            self.our_done = self.their_done = False
            self.state = self.IDLE
        else:
            self.state = PAUSED

    def _body_state(self, head, nobody: bool) -> None:
        if nobody:
            self.state, self.left = LENGTH, 0
        elif head.chunked:
            self.state = CHUNK_HEAD
        elif head.length is not None:
            self.state, self.left = LENGTH, head.length
        else:
            self.state, self.left = LENGTH, 0

    def _send_body(self, ev) -> bytes:
        if isinstance(ev, Data):
            if self.out_nobody or not ev.data:
                return b""
            if self.out_chunked:
                return b"%x\r\n%b\r\n" % (len(ev.data), ev.data)
            return ev.data
        if isinstance(ev, EndOfMessage):
            out = b""
            if self.out_chunked:
                out = serialize_head("0", ev.trailers) if ev.trailers else b"0\r\n\r\n"
            self.our_done = True
            if self.state == PAUSED or self.state == CLOSED:
                self._maybe_next_cycle()
            return out
        raise TypeError(f"{type(self).__name__} sends Data or EndOfMessage after the head, not {ev!r}")

    @property
    def keep_alive(self) -> bool:
        return self.keep and self.failed is None

    @property
    def idle(self) -> bool:
        """Between exchanges: both messages of the last one are complete."""
        return self.state == self.IDLE and not self.our_done and not self.their_done


class HTTP1Server(_Side):
    """The waypoint's side of a client's HTTP/1.1 connection."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES):
        super().__init__(max_header_bytes)
        self.responding = False
        self.method = ""
        self.version = "1.1"
        self.expect_continue = False   # the request waits for `100 Continue` (sent by whoever reads the body)

    def _head(self, buf: bytes, start: int, end: int, out: list) -> None:
        head = parse_request(buf, start, end, MAX_HEADERS)
        self.method, self.version, self.expect_continue = head.method, head.version, head.expect_continue
        if head.close:
            self.keep = False
        try:
            req = trusted_request(head.method, head.target, head.host or "", tuple(head.fields), head.version)
        except ValueError as exc:
            raise WireError(400, f"bad request: {exc}") from None
        out.append(req)
        self._body_state(head, False)
        if self.state == LENGTH and not self.left:
            self._end(out, ())

    def send(self, ev) -> bytes:
        if isinstance(ev, Response):
            if ev.status < 200:   # 100 Continue, 103 Early Hints
                if ev.status == 100:
                    self.expect_continue = False
                return serialize_head(f"HTTP/1.1 {ev.status} {ev.reason}", ev.headers)
            return self._response_head(ev)
        if isinstance(ev, EndOfMessage):
            self.responding = False
            if not self.their_done:   # answered before the request body was read: that body is not drained
                self.keep = False
        return self._send_body(ev)

    def _response_head(self, ev: Response) -> bytes:
        """h11's framing rules: Content-Length or chunked as given; otherwise chunked for an
        HTTP/1.1 client, close-delimited for an older one; `connection: close` when this
        exchange is the last."""
        self.responding = True
        self.expect_continue = False
        headers = list(ev.headers)
        names = {k for k, _ in headers}
        self.out_nobody = ev.status in (204, 304) or self.method == "HEAD"
        self.out_chunked = False
        if "transfer-encoding" in names:
            self.out_chunked = not self.out_nobody
        elif "content-length" not in names and not (ev.status in (204, 304)):
            if self.version == "1.1":
                headers.append(("transfer-encoding", "chunked"))
                self.out_chunked = not self.out_nobody
            elif not self.out_nobody:
                self.keep = False
        if "connection" in names and any(k == "connection" and "close" in v.lower() for k, v in headers):
            self.keep = False   # our answer says this exchange is the last (RFC 9112 9.6), as h11 did
        elif not self.keep:
            headers = [(k, v) for k, v in headers if k != "connection"] + [("connection", "close")]
        return serialize_head(f"HTTP/1.1 {ev.status} {ev.reason}", headers)

    def error_response(self, err: ProtocolError) -> bytes:
        """The answer to a refused request (then close), if a response can still be sent."""
        if self.responding:
            return b""   # a response is half sent: closing is the only honest end
        resp, data, _ = simple_response(err.status, err.message, (("connection", "close"),))
        try:
            reason = HTTPStatus(err.status).phrase
        except ValueError:
            reason = ""
        return serialize_head(f"HTTP/1.1 {err.status} {reason}", resp.headers) + data.data


class HTTP1Client(_Side):
    """The waypoint's side of an HTTP/1.1 connection to a backend (keep-alive reused)."""
    IDLE = PAUSED

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES):
        super().__init__(max_header_bytes)
        self.method = ""
        self.state = PAUSED   # nothing to read before a request went out

    def _head(self, buf: bytes, start: int, end: int, out: list) -> None:
        try:
            head = parse_response(buf, start, end, MAX_HEADERS)
        except WireError as exc:
            raise WireError(502, f"backend response refused: {exc.message}") from None
        if not 100 <= head.status <= 999:
            raise WireError(502, f"backend response refused: status {head.status} is not a 3-digit code")
        resp = trusted_response(head.status, tuple(head.fields), head.reason, head.version)
        out.append(resp)
        if head.status < 200:
            return   # informational: the final response follows
        if head.close:
            self.keep = False
        nobody = head.status in (204, 304) or self.method == "HEAD" or (
            self.method == "CONNECT" and head.status < 300)
        if not nobody and not head.chunked and head.length is None:
            self.state, self.keep = UNTIL_CLOSE, False   # delimited by the backend closing
            return
        self._body_state(head, nobody)
        if self.state == LENGTH and not self.left:
            self._end(out, ())

    def send(self, ev) -> bytes:
        if isinstance(ev, Request):
            self.method = ev.method
            names = {k for k, _ in ev.headers}
            headers = ev.headers if "host" in names else (("host", ev.authority),) + ev.headers
            self.out_chunked = "transfer-encoding" in names
            self.out_nobody = False
            self.state, self.our_done, self.their_done = HEAD, False, False
            return serialize_head(f"{ev.method} {ev.target} HTTP/1.1", headers)
        return self._send_body(ev)

    def events(self) -> list:
        out = super().events()
        if self.failed and self.failed.status < 500:   # the backend broke HTTP: a gateway error to the client
            self.failed = ProtocolError(502, self.failed.message)
            out[-1] = self.failed
        return out
