"""HBONE codec, sans-IO: HTTP/2 CONNECT tunnels over an h2 connection.

Bytes go in with `receive_data()` (which returns our own small events), bytes come out
of `data_to_send()`. No sockets here, so every decision is testable with two codecs
wired back to back. Wire shape as Istio's ztunnel: request pseudo-headers only
`:method CONNECT` and `:authority ip:port`; `:status 200` opens a tunnel, anything else
refuses it; END_STREAM is a half-close, RST_STREAM an abort. Unknown regular headers
(`baggage`, `traceparent`, `forwarded`, ...) are passed through and otherwise ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from . import h2private
from .framesplit import MAX_FRAME_SIZE, FrameSplitter
from .errors import LocalProtocolError, RemoteProtocolError
from .limits import DEFAULT_LIMITS, ENHANCE_YOUR_CALM, FrameGuard, LimitExceeded, Limits
# Re-exported: codec users see one namespace, as with h11.
from .events import (REASON_HEADER, BadRequest, ConnectionClosed, Data, Event, GoingAway, HalfClosed,  # noqa: F401
                     Headers, Reset, TunnelOpened, TunnelRefused, TunnelRequested, WindowOpened, format_authority,
                     parse_authority)

# Large windows and frames so bulk transfer is not throttled by flow control: on a fast
# path 64 KiB default windows stall a stream every few microseconds of RTT. 4 MiB per stream
# and 16 MiB per connection cover ~3 Gbit/s x 10 ms per stream while bounding what a slow
# reader can pin. 1 MiB frames (MAX_FRAME_SIZE, in framesplit) amortise framing and TLS records
# (we chunk at the peer's limit).
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_CONCURRENT_STREAMS = DEFAULT_LIMITS.max_concurrent_streams
MAX_HEADER_LIST_SIZE = 16 * 1024   # CONNECT needs a few hundred bytes; refuse header bombs
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # RFC 9113 section 3.4; h2 checks it

# ---- connections -----------------------------------------------------------------
@dataclass
class _Base(FrameSplitter):
    client_side: bool
    limits: Limits = DEFAULT_LIMITS
    _h2: h2.connection.H2Connection = field(init=False)
    closed: bool = field(init=False, default=False)        # fatal: nothing more in or out
    going_away: bool = field(init=False, default=False)    # graceful GOAWAY either way: no new streams
    _pending: bytearray = field(init=False, default_factory=bytearray)
    _inbuf: bytearray = field(init=False, default_factory=bytearray)
    _preface_left: int = field(init=False, default=0)   # client preface bytes h2 has yet to see
    guard: FrameGuard = field(init=False)
    _unanswered: set[int] = field(init=False, default_factory=set)   # server: requests not yet answered

    def __post_init__(self) -> None:
        self.guard = FrameGuard(self.limits)
        # Our own header blocks (CONNECT + authority, a status) skip h2's outbound checks;
        # a caller's headers and refusal reasons are checked (`h2private.send_headers`).
        config = h2.config.H2Configuration(client_side=self.client_side, header_encoding="utf-8",
                                           validate_inbound_headers=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(client=self.client_side, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        h2private.set_inbound_limits(self._h2, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._preface_left = 0 if self.client_side else len(CLIENT_PREFACE)

    # -- bytes in / out
    def data_to_send(self) -> bytes:
        return bytes(self.take_output())

    def take_output(self) -> bytearray:
        """What to send, handed over without a copy: h2's own output buffer (h2 starts a new
        one). A bulk tunnel's bytes are then copied once on their way to OpenSSL (into the
        frame), not three times."""
        out = h2private.take_output(self._h2)
        if self._pending:
            self._pending += out
            out, self._pending = self._pending, bytearray()
        return out

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed bytes from the peer (a memoryview: fast-path `Data` events are views into it).
        RemoteProtocolError if the peer broke HTTP/2; GOAWAY is then queued in `data_to_send()`."""
        if self.closed:
            return []
        # h2 drops unsent output when a GOAWAY arrives; keep what tunnels already queued.
        queued = h2private.take_output(self._h2)
        if queued and self._pending:
            self._pending += queued
        elif queued:
            self._pending = queued
        out: list[Event] = []
        try:
            for ev in self._receive(data):
                if not isinstance(ev, h2.events.Event):
                    out.append(ev)   # taken by a fast path (h2private, fastheaders), already our event
                else:
                    out.extend(self._translate(ev))
        except LimitExceeded as e:
            self._fail(str(e), ENHANCE_YOUR_CALM)
            raise
        except h2.exceptions.TooManyStreamsError as e:
            self._fail(str(e))
            raise LimitExceeded("concurrent_streams", f"peer opened more than {self.limits.max_concurrent_streams} "
                                                      f"concurrent streams: {e}") from None
        except h2.exceptions.ProtocolError as e:
            raise self._fail(f"malformed HTTP/2 from peer: {e}") from None
        except Exception as e:   # hpack/hyperframe corner cases, a non-numeric :status, ...
            raise self._fail(f"malformed HTTP/2 from peer ({type(e).__name__}: {e})") from None
        return out

    def _fail(self, message: str, code: int = h2.errors.ErrorCodes.PROTOCOL_ERROR) -> RemoteProtocolError:
        self.closed = True
        try:
            self._h2.close_connection(error_code=code, additional_data=message.encode()[:200] if code == ENHANCE_YOUR_CALM else None)
        except h2.exceptions.ProtocolError:
            pass   # already closed by h2 itself; its GOAWAY is queued
        return RemoteProtocolError(message)

    def _translate(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.DataReceived):
            if not ev.data and not ev.flow_controlled_length:
                return []   # the empty DATA frame that only carries END_STREAM
            return [Data(ev.stream_id, bytes(ev.data), ev.flow_controlled_length)]
        if isinstance(ev, h2.events.StreamEnded):
            return [HalfClosed(ev.stream_id)]
        if isinstance(ev, h2.events.StreamReset):
            if ev.remote_reset and ev.stream_id in self._unanswered:
                self._unanswered.discard(ev.stream_id)
                self.guard.premature_reset()
            return [Reset(ev.stream_id, int(ev.error_code or 0))]
        if isinstance(ev, h2.events.WindowUpdated):
            return [WindowOpened(ev.stream_id)]
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            return [WindowOpened(0)]
        if isinstance(ev, h2.events.ConnectionTerminated):
            extra = (ev.additional_data or b"").decode("utf-8", "replace")
            if not ev.error_code and ev.last_stream_id is not None:
                self.going_away = True   # streams up to last_stream_id finish (as Istio's ztunnel drains)
                h2private.reopen(self._h2, self.client_side)
                return [GoingAway(ev.last_stream_id, extra)]
            self.closed = True
            return [ConnectionClosed(int(ev.error_code or 0), extra, ev.last_stream_id)]
        return self._translate_role(ev)

    def _translate_role(self, ev: h2.events.Event) -> list[Event]:
        return []   # pings, settings acks, priority, trailers: nothing for tunnels

    # -- sending
    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of `data` as flow control allows now; return how much."""
        view = memoryview(data)
        fast = h2private.send(self._h2, stream_id, view)
        if fast is not None:
            return fast
        try:
            room = min(len(view), self._h2.local_flow_control_window(stream_id))
            sent = 0
            while sent < room:
                chunk = view[sent:sent + min(room - sent, self._h2.max_outbound_frame_size)]
                self._h2.send_data(stream_id, chunk.tobytes())
                sent += len(chunk)
            return sent
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"cannot send on stream {stream_id}: {e}") from None

    def send_window(self, stream_id: int) -> int:
        try:
            return self._h2.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"stream {stream_id}: {e}") from None

    def half_close(self, stream_id: int) -> None:
        try:
            h2private.end_stream(self._h2, stream_id)   # h2's end_stream when it is not the plain case
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"cannot half-close stream {stream_id}: {e}") from None

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Abort a stream; a stream that is already gone needs nothing."""
        self._unanswered.discard(stream_id)
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass

    def ack(self, stream_id: int, n: int) -> None:
        """The application consumed `n` flow-controlled bytes: let the peer send more."""
        if n <= 0 or self.closed or h2private.ack(self._h2, stream_id, n):
            return
        try:
            self._h2.acknowledge_received_data(n, stream_id)
        except h2.exceptions.ProtocolError:
            pass   # the connection is going down; nothing to open

    @property
    def header_block_open(self) -> bool:
        """The peer started a header block and has not ended it: its deadline runs."""
        return self.guard.header_block_open

    def calm_down(self, exc: LimitExceeded) -> None:
        """The peer went over a limit the codec cannot see (a deadline): GOAWAY(ENHANCE_YOUR_CALM)."""
        self._fail(str(exc), ENHANCE_YOUR_CALM)

    def close(self, code: int = 0, reason: str = "") -> None:
        """Send GOAWAY: no new streams; existing ones may finish."""
        if not self.closed:
            self.closed = True
            try:
                self._h2.close_connection(error_code=code, additional_data=reason.encode() or None)
            except h2.exceptions.ProtocolError:
                pass   # h2 already closed it (peer GOAWAY or a protocol error)

    def drain(self, reason: str = "") -> None:
        """Graceful GOAWAY (NO_ERROR): the peer opens no new streams, open ones finish."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._h2.close_connection(0, additional_data=reason.encode() or None)
        h2private.reopen(self._h2, self.client_side)   # open streams finish, as Istio's ztunnel drains

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._h2.remote_settings.max_concurrent_streams

    @property
    def open_outbound_streams(self) -> int:
        return self._h2.open_outbound_streams


class ClientConnection(_Base):
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(client_side=True, limits=limits)

    def open_tunnel(self, authority: str, headers: Headers | list[tuple[str, str]] = ()) -> int:
        try:
            parse_authority(authority)
        except ValueError as e:
            raise LocalProtocolError(str(e)) from None
        if self.going_away or self.closed:
            raise LocalProtocolError("connection is going away (GOAWAY); open the tunnel on a new one")
        sid = self._h2.get_next_available_stream_id()
        if not headers and h2private.send_connect(self._h2, sid, authority.encode()):
            return sid   # our plain encoding, which the peer's codec takes without h2 (fastheaders)
        hdrs = [(":method", "CONNECT"), (":authority", authority), *headers]
        try:
            h2private.send_headers(self._h2, sid, hdrs, checked=bool(headers))   # the caller's headers are checked
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"cannot open tunnel to {authority}: {e}") from None
        return sid

    def _translate_role(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.ResponseReceived):
            hdrs = dict(ev.headers)
            status = int(hdrs.get(":status", "0"))
            if status == 200:
                return [TunnelOpened(ev.stream_id)]
            return [TunnelRefused(ev.stream_id, status, hdrs.get(REASON_HEADER, ""))]
        return []


class ServerConnection(_Base):
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(client_side=False, limits=limits)

    def _translate_role(self, ev: h2.events.Event) -> list[Event]:
        if not isinstance(ev, h2.events.RequestReceived):
            return []
        pseudo = {k: v for k, v in ev.headers if k.startswith(":")}
        regular = tuple((k, v) for k, v in ev.headers if not k.startswith(":"))
        method = pseudo.get(":method", "")
        if method != "CONNECT":
            return [self._bad(ev.stream_id, 405, f"method {method!r} is not CONNECT; HBONE only tunnels")]
        try:
            authority = parse_authority(pseudo.get(":authority", ""))
        except ValueError as e:
            return [self._bad(ev.stream_id, 400, str(e))]
        self._unanswered.add(ev.stream_id)
        return [TunnelRequested(ev.stream_id, authority, regular)]

    def _bad(self, stream_id: int, status: int, reason: str) -> BadRequest:
        try:
            self.refuse(stream_id, status, reason)
        except LocalProtocolError:
            pass   # a later frame in the same batch already reset the stream
        return BadRequest(stream_id, status, reason)

    def accept(self, stream_id: int) -> None:
        self._unanswered.discard(stream_id)
        try:
            h2private.send_status_200(self._h2, stream_id)   # h2's frame machinery only when needed
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"cannot accept stream {stream_id}: {e}") from None

    def refuse(self, stream_id: int, status: int, reason: str = "") -> None:
        if not 200 < status < 600:
            raise LocalProtocolError(f"refuse needs a non-200 HTTP status, got {status}")
        self._unanswered.discard(stream_id)
        hdrs = [(":status", str(status))]
        if reason:
            # Header values must not carry CR/LF; keep the reason readable but safe.
            hdrs.append((REASON_HEADER, " ".join(reason.split())[:200]))
        try:
            h2private.send_headers(self._h2, stream_id, hdrs, end_stream=True, checked=bool(reason))
        except h2.exceptions.ProtocolError as e:
            raise LocalProtocolError(f"cannot refuse stream {stream_id}: {e}") from None
