"""DATA frames on open tunnels without h2's per-frame machinery: the tunnel hot path.

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

from h2.connection import ConnectionState, H2Connection
from h2.stream import StreamState
from h2.windows import WindowManager

HEADER = struct.Struct(">BHBBI")   # 24-bit length as 8+16 bits, type, flags, stream id
HEADER_LEN = 9
DATA = 0
_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
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


def take(conn: H2Connection, stream_id: int, length: int) -> bool:
    """May this flagless DATA frame skip h2? Only when h2 would accept it without a word;
    if so, account it in h2's inbound windows, as h2's own receive would."""
    if conn.state_machine.state not in _OPEN:
        return False
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
