"""HTTP/2 over h2, sans-IO, turned into the shared events: `receive_data(bytes)`, `events()`,
`send(event) -> bytes` and `data_to_send()`, the same surface as h1.py so that the proxy
above sees streams and keep-alive alike.

Flow control: bodies we send wait in a per-stream buffer until the peer's window allows
(WINDOW_UPDATE flushes them); bodies we receive are acknowledged only when the application
calls `ack(stream_id, n)` after consuming them, so a slow reader pushes back on the sender.
Limits: SETTINGS_MAX_CONCURRENT_STREAMS and MAX_HEADER_LIST_SIZE are advertised and enforced
by h2 (which also bounds CONTINUATION floods); more than MAX_EARLY_RESETS streams reset by
the peer before their response within one RESET_WINDOW (the 2023 "rapid reset" attack) ends
the connection with GOAWAY ENHANCE_YOUR_CALM. A broken peer gives one `ProtocolError` event and
a GOAWAY in `data_to_send()`; nothing here raises on the peer's bytes.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .events import (ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, StreamReset,
                     end_to_end)

MAX_CONCURRENT_STREAMS = 100
MAX_HEADER_LIST_SIZE = 16 * 1024
MAX_EARLY_RESETS = 100
RESET_WINDOW = 1.0
WINDOW = 4 * 1024 * 1024


def _text(headers) -> list[tuple[str, str]]:
    return [((k.decode("ascii") if isinstance(k, bytes) else k).lower(),
             v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in headers]


class _H2Side:
    def __init__(self, client_side: bool, clock: Callable[[], float]):
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_inbound_headers=True, validate_outbound_headers=True)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(client=client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.conn.initiate_connection()
        # h2 applies a header-list limit only once the peer acknowledges our SETTINGS; enforce
        # ours from the first HEADERS frame (it is what we advertised).
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self.conn.increment_flow_control_window(WINDOW)
        self.clock = clock
        self.client_side = client_side
        self.failed: ProtocolError | None = None
        self._pending: list = []
        self._out: dict[int, deque] = {}          # stream -> queued bytes, then None for "end"
        self._trailers: dict[int, list] = {}
        self._ended: set[int] = set()
        self._open: set[int] = set()              # streams whose exchange is not complete
        self._early_resets: deque[float] = deque()

    def receive_data(self, data: bytes) -> None:
        if self.failed is not None:
            return
        if not data:
            self._pending.append(ConnectionClosed("peer closed the connection"))
            return
        try:
            for ev in self.conn.receive_data(data):
                self._handle(ev)
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._fail(400, f"malformed HTTP/2: {exc}", code)

    def _fail(self, status: int, message: str, code) -> None:
        self.failed = ProtocolError(status, message, 0)
        self._pending.append(self.failed)
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass

    def events(self) -> list:
        out, self._pending = self._pending, []
        return out

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def ack(self, stream_id: int, n: int) -> None:
        """The application consumed n body bytes of stream_id: open the window again."""
        if n and stream_id in self.conn.streams:
            try:
                self.conn.acknowledge_received_data(n, stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def _handle(self, ev) -> None:
        if isinstance(ev, h2.events.DataReceived):
            if ev.flow_controlled_length > len(ev.data):       # padding is ours to acknowledge
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))
            self._pending.append(Data(ev.data, ev.stream_id))
        elif isinstance(ev, h2.events.TrailersReceived):
            self._ended.add(ev.stream_id)
            self._pending.append(EndOfMessage(tuple(_text(ev.headers)), ev.stream_id))
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id not in self._ended:
                self._pending.append(EndOfMessage(stream_id=ev.stream_id))
            self._ended.discard(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            self._out.pop(ev.stream_id, None)
            if ev.remote_reset and ev.stream_id in self._open and not self.client_side:
                self._count_early_reset()
            self._open.discard(ev.stream_id)
            self._pending.append(StreamReset(ev.stream_id, int(ev.error_code)))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._pending.append(ConnectionClosed(f"GOAWAY {ev.error_code!s}"))
        elif isinstance(ev, h2.events.WindowUpdated):
            self._flush_all()
        else:
            self._other(ev)

    def _count_early_reset(self) -> None:
        now = self.clock()
        self._early_resets.append(now)
        while self._early_resets and now - self._early_resets[0] > RESET_WINDOW:
            self._early_resets.popleft()
        if len(self._early_resets) > MAX_EARLY_RESETS and self.failed is None:
            self._fail(400, f"more than {MAX_EARLY_RESETS} streams reset before their response within "
                            f"{RESET_WINDOW:g}s (HTTP/2 rapid reset): connection closed",
                       h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _other(self, ev) -> None:
        """Settings, pings, priority: h2 answers what needs answering."""

    def _queue(self, stream_id: int, item) -> bytes:
        self._out.setdefault(stream_id, deque()).append(item)
        self._flush(stream_id)
        return self.conn.data_to_send()

    def _flush(self, stream_id: int) -> None:
        q = self._out.get(stream_id)
        while q:
            item = q[0]
            if item is None:
                q.popleft()
                trailers = self._trailers.pop(stream_id, None)
                if trailers:
                    self.conn.send_headers(stream_id, trailers, end_stream=True)
                else:
                    self.conn.end_stream(stream_id)
                self._stream_done(stream_id)
                continue
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                return
            chunk, rest = item[:window], item[window:]
            self.conn.send_data(stream_id, chunk)
            if rest:
                q[0] = rest
            else:
                q.popleft()
        self._out.pop(stream_id, None)

    def queued(self, stream_id: int) -> int:
        """Body bytes of stream_id waiting for the peer's window (a sender pauses above a limit)."""
        return sum(len(item) for item in self._out.get(stream_id, ()) if item is not None)

    def _flush_all(self) -> None:
        for sid in list(self._out):
            if sid in self.conn.streams:
                self._flush(sid)

    def _stream_done(self, stream_id: int) -> None:
        pass

    def _send_body(self, ev) -> bytes:
        if isinstance(ev, Data):
            return self._queue(ev.stream_id, ev.data) if ev.data else b""
        if isinstance(ev, EndOfMessage):
            if ev.trailers:
                self._trailers[ev.stream_id] = [(k.encode(), v.encode("latin-1")) for k, v in ev.trailers]
            return self._queue(ev.stream_id, None)
        if isinstance(ev, StreamReset):
            self._out.pop(ev.stream_id, None)
            self._open.discard(ev.stream_id)
            self.conn.reset_stream(ev.stream_id, ev.error_code or h2.errors.ErrorCodes.CANCEL)
            return self.conn.data_to_send()
        raise TypeError(f"cannot send {ev!r} on HTTP/2")

    @property
    def keep_alive(self) -> bool:
        return self.failed is None and self.conn.state_machine.state != h2.connection.ConnectionState.CLOSED


def _regular(headers) -> list[tuple[bytes, bytes]]:
    """Headers as HTTP/2 carries them: no Host (it is :authority), no hop-by-hop fields."""
    return [(k.encode("ascii"), v.encode("latin-1")) for k, v in end_to_end(headers) if k != "host"]


class HTTP2Server(_H2Side):
    """The waypoint's side of a client's HTTP/2 (prior knowledge) connection."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__(False, clock)
        self._head: set[int] = set()   # HEAD streams: their answers carry no content (RFC 9110 9.3.2)

    @property
    def closed(self) -> bool:
        """GOAWAY sent or received: h2 refuses to frame anything more (other streams' answers
        then would raise out of their tasks and cut the connection before our GOAWAY left)."""
        return self.conn.state_machine.state is h2.connection.ConnectionState.CLOSED

    def _other(self, ev) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            pseudo = {k: v for k, v in _text(ev.headers) if k.startswith(":")}
            regular = tuple((k, v) for k, v in _text(ev.headers) if not k.startswith(":"))
            host = pseudo.get(":authority") or next((v for k, v in regular if k == "host"), "")
            try:
                req = Request(pseudo.get(":method", ""), pseudo.get(":path", ""), host, regular,
                              scheme=pseudo.get(":scheme", "http"), http_version="2", stream_id=ev.stream_id)
            except ValueError as exc:
                self.conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self._pending.append(ProtocolError(400, f"bad request: {exc}", ev.stream_id))
                return
            self._open.add(ev.stream_id)
            if req.method == "HEAD":
                self._head.add(ev.stream_id)
            self._pending.append(req)

    def _stream_done(self, stream_id: int) -> None:
        self._open.discard(stream_id)     # our response is complete: a reset now is not "early"
        self._head.discard(stream_id)

    def _send_body(self, ev) -> bytes:
        """A local answer's body (404, a redirect's...) is not sent for HEAD: DATA there breaks
        the client's stream (h2 checks it against the content-length of zero HEAD implies)."""
        if isinstance(ev, Data) and ev.stream_id in self._head:
            return b""
        if isinstance(ev, StreamReset):
            self._head.discard(ev.stream_id)
        return super()._send_body(ev)

    def send_headers_only(self, ev: Response) -> bytes:
        """A response without body or trailers in one HEADERS frame with END_STREAM (gRPC's
        trailers-only form: a DATA frame ending the stream instead would break gRPC clients)."""
        if self.closed:
            return self.conn.data_to_send()
        try:
            self.conn.send_headers(ev.stream_id, [(b":status", str(ev.status).encode())] + _regular(ev.headers),
                                   end_stream=True)
            self._stream_done(ev.stream_id)
        except _GONE:
            pass
        return self.conn.data_to_send()

    def send(self, ev) -> bytes:
        """Bytes to write now; b"" for a stream the client has already reset, or once the
        connection is closed (a GOAWAY either way: nothing more to say on it)."""
        if self.closed:
            return self.conn.data_to_send()
        try:
            if isinstance(ev, Response):
                headers = [(b":status", str(ev.status).encode())] + _regular(ev.headers)
                self.conn.send_headers(ev.stream_id, headers)
                return self.conn.data_to_send()
            return self._send_body(ev)
        except _GONE:
            self._out.pop(ev.stream_id, None)
            return self.conn.data_to_send()


# A stream the client reset: closed, or already pruned by h2 (then our HEADERS would open a
# "new" stream below the highest id). Either way there is nothing to say on it; raising would
# end the connection's other streams (a client cancelling a call could do that at will).
_GONE = (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError)


class HTTP2Client(_H2Side):
    """The waypoint's side of an HTTP/2 connection to a backend (gRPC, or any h2 client)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__(True, clock)

    def next_stream_id(self) -> int:
        return self.conn.get_next_available_stream_id()

    def _other(self, ev) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            headers = _text(ev.headers)
            status = next((v for k, v in headers if k == ":status"), "502")
            regular = tuple((k, v) for k, v in headers if not k.startswith(":"))
            self._pending.append(Response(int(status), regular, http_version="2", stream_id=ev.stream_id))

    def send(self, ev) -> bytes:
        if isinstance(ev, Request):
            pseudo = [(b":method", ev.method.encode()), (b":scheme", ev.scheme.encode()),
                      (b":authority", ev.authority.encode("latin-1")), (b":path", ev.target.encode("latin-1"))]
            self.conn.send_headers(ev.stream_id, pseudo + _regular(ev.headers))
            self._open.add(ev.stream_id)
            return self.conn.data_to_send()
        return self._send_body(ev)
