"""Every use of h2's private state, in one place: pinned to the h2 series it was written
against (pyproject.toml), and checked by `check_internals()` (a test fails naming the pin).

Three jobs. The codec's few reaches into h2 (`take_output`, `keep_output`, `reopen`,
`set_inbound_limits`, `send_headers`). A tunnel's 200 received without h2
(`take_status_200`: always one and the same frame). And DATA frames on open tunnels
without h2's per-frame machinery, the tunnel hot path:

h2 builds a frame object, runs two state machines and formats debug strings for every
DATA frame: about 13 us to send a small one and 25 us to receive it, which was a fifth of
ztunnel's CPU per proxied request. A DATA frame without flags on a stream that is open
in that direction changes no state but the flow-control windows, so here such frames are
written and parsed directly, and the windows are kept in h2's own accounting (the same
attributes and window managers h2 uses), so h2 stays the single source of truth for
everything else: headers, END_STREAM, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE, and
every error. Anything unusual (a flag, padding, a closed stream, a frame over the window
or the size limit) is handed to h2 unchanged, in order, so it is judged as before.

This relies on h2 internals (`streams`, `_data_to_send`, the window managers); the HBONE
test suite (codec, fuzz, flow control, half-close) fails if a new h2 changes them.
"""
from __future__ import annotations

import struct

import h2
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection
from h2.stream import StreamInputs, StreamState
from h2.windows import WindowManager

PINNED_SERIES = "4.4"   # pyproject.toml: h2 ~= 4.4.0 (the internals below are h2 4.4's)

HEADER = struct.Struct(">BHBBI")   # 24-bit length as 8+16 bits, type, flags, stream id
HEADER_LEN = 9
DATA = 0
HEADERS, END_HEADERS = 1, 0x4
END_STREAM = 0x1   # on DATA (and HEADERS) frames
STATUS_200 = 0x88   # RFC 7541 appendix A: static table entry 8, ":status: 200", indexed
# RFC 7541 6.2.2, literal header field without indexing, name from the static table (entry 2
# `:method`, entry 1 `:authority`), value a plain (not Huffman) string of 7-bit length: neither
# side's dynamic table changes, so h2's encoder and the peer's decoder stay as they were.
CONNECT_PREFIX = b"\x02\x07CONNECT\x01"
WALK_EVERY = 100   # streams h2 may keep (closed ones until the next count) before a concurrency check walks them
_FRAME_200 = bytes((0, 0, 1, HEADERS, END_HEADERS))
_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
_NEW_STREAM = (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)   # (with the role)
_CAN_SEND = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_CAN_RECEIVE = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)


def send(conn: H2Connection, stream_id: int, view: memoryview) -> int | None:
    """Frame as much of `view` as flow control allows into h2's output; None: let h2 do it."""
    stream = conn.streams.get(stream_id)
    if (stream is None or stream.state_machine.state not in _CAN_SEND
            or conn.state_machine.state not in _OPEN):
        return None
    room = min(len(view), conn.outbound_flow_control_window, stream.outbound_flow_control_window)
    if room <= 0:
        return 0
    max_frame = conn.max_outbound_frame_size
    out = conn._data_to_send
    sent = 0
    while sent < room:
        n = min(room - sent, max_frame)
        out += HEADER.pack(n >> 16, n & 0xFFFF, DATA, 0, stream_id)
        out += view[sent:sent + n]
        sent += n
    stream.outbound_flow_control_window -= sent
    conn.outbound_flow_control_window -= sent
    return sent


def take_status_200(conn: H2Connection, stream_id: int) -> bool:
    """May this HEADERS frame (END_HEADERS alone, the one byte 0x88, HPACK's static entry 8
    `:status: 200`, which leaves the decoder's table as it was) skip h2? Only as a client's
    first response on an open stream, as h2 would take it; if so, record it as h2's receive
    does (the response seen, no content length). h2 took ~35-70 us for this frame."""
    if conn.state_machine.state is not ConnectionState.CLIENT_OPEN or conn.incoming_buffer._headers_buffer:
        return False
    stream = conn.streams.get(stream_id)
    if stream is None:
        return False
    machine = stream.state_machine
    if machine.state is not StreamState.OPEN or not machine.client or machine.headers_received:
        return False
    machine.headers_received = True
    stream._expected_content_length = None
    return True


def end_stream(conn: H2Connection, stream_id: int) -> None:
    """h2's end_stream(stream_id): an empty DATA frame with END_STREAM, written here when the
    stream may send (the plain case: the frame is always the same nine bytes) and moved in h2's
    state machine as h2's end_stream moves it (~2 us instead of h2's 16-18: frame object, two
    state machines, debug formatting); anything else by h2 (raising what it raises)."""
    stream = conn.streams.get(stream_id)
    if stream is None or conn.state_machine.state not in _OPEN or stream.state_machine.state not in _CAN_SEND:
        conn.end_stream(stream_id)
        return
    stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)   # OPEN -> HALF_CLOSED_LOCAL, or CLOSED
    conn._data_to_send += HEADER.pack(0, 0, DATA, END_STREAM, stream_id)


def take_end_stream(conn: H2Connection, stream_id: int) -> bool:
    """May this empty DATA frame with END_STREAM alone skip h2? Only on a stream open in our
    receiving direction whose headers came (h2 would take it without a word: no window to
    consume, no content-length to check); if so, move the stream as h2's receive does."""
    if conn.state_machine.state not in _OPEN or conn.incoming_buffer._headers_buffer:
        return False
    stream = conn.streams.get(stream_id)
    if stream is None or stream._expected_content_length is not None:
        return False
    machine = stream.state_machine
    if machine.state not in _CAN_RECEIVE or not machine.headers_received:
        return False
    machine.process_input(StreamInputs.RECV_END_STREAM)   # OPEN -> HALF_CLOSED_REMOTE, or CLOSED
    return True


def _over_limit(conn: H2Connection, limit: int, *, outbound: bool) -> bool:
    """Would one more stream that way exceed `limit` (h2's concurrency check)? h2 counts by
    walking every stream it keeps, and drops the closed ones while it walks (3.7 us with 16
    open); while fewer streams than the limit are kept at all none can be over it, so the walk
    (and with it h2's cleanup) runs only once the table holds `limit` streams, open or closed
    (at most WALK_EVERY: a peer's limit may be 2**31, and closed streams cost memory)."""
    if len(conn.streams) < min(limit, WALK_EVERY):
        return False
    return (conn.open_outbound_streams if outbound else conn.open_inbound_streams) + 1 > limit


def send_connect(conn: H2Connection, stream_id: int, authority: bytes) -> bool:
    """Open a new client stream with the tunnel's CONNECT written here (`CONNECT_PREFIX` and the
    authority) rather than by h2 (~35 us: frame objects, header checks, Huffman coding); False,
    with nothing changed: let h2 do it. The stream is h2's own, opened and moved as h2's
    send_headers does; h2's concurrency check runs first. Only when the encoder owes the peer
    no table size update (RFC 7541 4.2: it would lead the next block)."""
    if (len(authority) > 126 or not conn.config.client_side or conn.state_machine.state not in _NEW_STREAM
            or conn.encoder.table_size_changes or stream_id in conn.streams
            or _over_limit(conn, conn.remote_settings.max_concurrent_streams, outbound=True)):
        return False
    conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)   # IDLE -> CLIENT_OPEN on the first
    stream = conn._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
    stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
    stream._authority, stream.request_method = authority, b"CONNECT"
    n = len(CONNECT_PREFIX) + 1 + len(authority)
    conn._data_to_send += HEADER.pack(0, n, HEADERS, END_HEADERS, stream_id)
    conn._data_to_send += CONNECT_PREFIX + bytes((len(authority),)) + authority
    return True


def send_status_200(conn: H2Connection, stream_id: int) -> None:
    """A server's 200: the one byte 0x88 written here on a stream whose request came in and
    has no answer yet, the stream moved as h2's send_headers moves it (~30 us less than h2's
    frame machinery); anything else by h2's send_headers (raising what it raises)."""
    stream = conn.streams.get(stream_id)
    machine = stream.state_machine if stream is not None else None
    if (machine is None or conn.state_machine.state is not ConnectionState.SERVER_OPEN
            or conn.encoder.table_size_changes or machine.client or machine.headers_sent
            or machine.state not in _CAN_SEND):
        conn.send_headers(stream_id, [(":status", "200")])
        return
    machine.process_input(StreamInputs.SEND_HEADERS)
    conn._data_to_send += _FRAME_200 + stream_id.to_bytes(4, "big") + bytes((STATUS_200,))


def take_connect(conn: H2Connection, stream_id: int) -> bool:
    """May this CONNECT skip h2? A HEADERS frame (END_HEADERS alone) whose block is exactly
    `CONNECT_PREFIX` + a plain authority (`connect_authority`: our own encoding, which leaves
    the decoder's table alone), opening a new stream h2 would open without a word (in order,
    under the concurrency limit, outside a header block). If so the stream is opened and moved
    in h2's state as h2's receive does; False, with nothing changed: let h2 judge the frame.
    The caller vets the authority (an ip:port) first, which covers h2's inbound value checks."""
    if (conn.config.client_side or conn.state_machine.state not in _NEW_STREAM or not stream_id & 1
            or stream_id <= conn.highest_inbound_stream_id or conn.incoming_buffer._headers_buffer
            or _over_limit(conn, conn.local_settings.max_concurrent_streams, outbound=False)):
        return False
    conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
    stream = conn._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
    stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
    return True


def connect_authority(block: bytes) -> bytes | None:
    """The authority if `block` is exactly our CONNECT encoding, else None (sans h2 state)."""
    n = len(CONNECT_PREFIX)
    if block[:n] != CONNECT_PREFIX or len(block) < n + 1 or block[n] != len(block) - n - 1 or block[n] > 126:
        return None
    return block[n + 1:]


def take(conn: H2Connection, stream_id: int, length: int) -> bool:
    """May this flagless DATA frame skip h2? Only when h2 would accept it without a word;
    if so, account it in h2's inbound windows, as h2's own receive would."""
    if conn.state_machine.state not in _OPEN or conn.incoming_buffer._headers_buffer:
        return False   # (inside a header block any other frame is h2's PROTOCOL_ERROR, RFC 9113 6.2)
    stream = conn.streams.get(stream_id)
    if stream is None or stream.state_machine.state not in _CAN_RECEIVE:
        return False
    stream_window, conn_window = stream._inbound_window_manager, conn._inbound_flow_control_window_manager
    if length > stream_window.current_window_size or length > conn_window.current_window_size:
        return False
    conn_window.window_consumed(length)
    stream_window.window_consumed(length)
    return True


def ack(conn: H2Connection, stream_id: int, n: int) -> bool:
    """Hand `n` processed bytes back to the inbound windows without h2, when neither the
    connection's nor the stream's window would send a WINDOW_UPDATE for them yet (h2's
    own rule); False, with nothing changed: let h2 do it and frame the update. Most
    acknowledgements are of this kind: an update goes out once half a window was read."""
    conn_window = conn._inbound_flow_control_window_manager
    if not _quiet(conn_window, n):
        return False
    stream = conn.streams.get(stream_id)
    if stream is not None and stream.state_machine.state is not StreamState.CLOSED:
        stream_window = stream._inbound_window_manager
        if not _quiet(stream_window, n):
            return False
        stream_window._bytes_processed += n
    conn_window._bytes_processed += n   # h2 counts it on the connection whatever the stream
    return True


def _quiet(window: WindowManager, n: int) -> bool:
    """Would `window.process_bytes(n)` leave its state alone but the count (no increment,
    no reset)? Mirrors h2's WindowManager._maybe_update_window."""
    processed = window._bytes_processed + n
    half = window.max_window_size // 2
    if processed >= half:
        return False
    return not (window.current_window_size == 0 and processed > min(1024, window.max_window_size // 4))


# ---- the codec's reaches into h2 -------------------------------------------------------

def take_output(conn: H2Connection) -> bytearray:
    """h2's output buffer itself, without a copy (h2 starts a new one)."""
    out = conn._data_to_send
    if out:
        conn._data_to_send = bytearray()
    return out


def send_headers(conn: H2Connection, stream_id: int, headers: list, end_stream: bool = False,
                 checked: bool = False) -> None:
    """h2's send_headers on a connection configured without outbound header checks (the
    codec's own blocks, CONNECT + authority or a status, are known good: the checks were
    ~5% of a tunnel's codec time); `checked` turns h2's validation and normalisation on
    for this block, for text from elsewhere (a caller's headers, a refusal reason)."""
    if not checked:   # (h2's config attributes are validating descriptors: set only when needed)
        conn.send_headers(stream_id, headers, end_stream=end_stream)
        return
    config = conn.config
    config.validate_outbound_headers = config.normalize_outbound_headers = True
    try:
        conn.send_headers(stream_id, headers, end_stream=end_stream)
    finally:
        config.validate_outbound_headers = config.normalize_outbound_headers = False


def set_inbound_limits(conn: H2Connection, max_frame_size: int, max_header_list_size: int) -> None:
    """h2 copies these from its local settings only in __init__ or on a settings ACK; ours are
    in force from the first byte (we never advertise anything smaller)."""
    conn.max_inbound_frame_size = max_frame_size
    conn.decoder.max_header_list_size = max_header_list_size


def reopen(conn: H2Connection, client_side: bool) -> None:
    """h2 treats any GOAWAY, sent or received, as the end of the connection, but RFC 9113
    section 6.8 lets streams at or below last_stream_id finish: put h2's connection state
    back to OPEN (the codec's `going_away` keeps it from opening streams)."""
    conn.state_machine.state = ConnectionState.CLIENT_OPEN if client_side else ConnectionState.SERVER_OPEN


def check_internals() -> list[str]:
    """What this module relies on that the installed h2 does not have, as sentences."""
    problems = []
    if not h2.__version__.startswith(PINNED_SERIES + "."):
        problems.append(f"h2 {h2.__version__} is installed, this module was written against {PINNED_SERIES}.x")
    conn = H2Connection()   # client side
    conn.initiate_connection()
    try:
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
        stream = conn.streams.get(1)
    except Exception as e:   # noqa: BLE001 - any failure is the finding
        stream, problems = None, problems + [f"h2 could not open a stream: {e}"]
    checks = {
        "H2Connection._data_to_send (a bytearray)": isinstance(getattr(conn, "_data_to_send", None), bytearray),
        "H2Connection._inbound_flow_control_window_manager": isinstance(
            getattr(conn, "_inbound_flow_control_window_manager", None), WindowManager),
        "H2Connection.state_machine.state (a ConnectionState)": isinstance(
            getattr(getattr(conn, "state_machine", None), "state", None), ConnectionState),
        "H2Connection.streams": stream is not None,
        "H2Stream._inbound_window_manager": isinstance(getattr(stream, "_inbound_window_manager", None),
                                                       WindowManager),
        "H2Stream.state_machine.state (a StreamState)": isinstance(
            getattr(getattr(stream, "state_machine", None), "state", None), StreamState),
        "H2Stream.outbound_flow_control_window": isinstance(getattr(stream, "outbound_flow_control_window", None),
                                                            int),
        "H2Connection.decoder.max_header_list_size": hasattr(getattr(conn, "decoder", None), "max_header_list_size"),
        "H2Connection.max_inbound_frame_size": isinstance(getattr(conn, "max_inbound_frame_size", None), int),
        "H2Stream.state_machine.headers_received / .client, H2Stream._expected_content_length": all(
            hasattr(o, a) for o, a in ((getattr(stream, "state_machine", None), "headers_received"),
                                       (getattr(stream, "state_machine", None), "client"),
                                       (stream, "_expected_content_length"))),
        "WindowManager._bytes_processed / _maybe_update_window (mirrored by _quiet)": all(
            hasattr(WindowManager(65535), a) for a in ("_bytes_processed", "_maybe_update_window",
                                                        "current_window_size", "max_window_size")),
    }
    checks.update(_header_checks(conn, stream))
    problems += [f"h2 no longer has {what}" for what, ok in checks.items() if not ok]
    return problems


def _header_checks(conn: H2Connection, stream: object) -> dict[str, bool]:
    """What the tunnel's own header blocks (`send_connect`, `send_status_200`, `take_connect`) use."""
    machine = getattr(stream, "state_machine", None)
    return {
        "H2Connection.encoder.table_size_changes (a list)": isinstance(
            getattr(getattr(conn, "encoder", None), "table_size_changes", None), list),
        "H2Connection.incoming_buffer._headers_buffer (a list)": isinstance(
            getattr(getattr(conn, "incoming_buffer", None), "_headers_buffer", None), list),
        "H2Connection._begin_new_stream / highest_inbound_stream_id": callable(
            getattr(conn, "_begin_new_stream", None)) and isinstance(getattr(conn, "highest_inbound_stream_id", None), int),
        "H2Stream._authority / .request_method / .state_machine.headers_sent": all(
            hasattr(o, a) for o, a in ((stream, "_authority"), (stream, "request_method"), (machine, "headers_sent"))),
    }
