"""The tunnel's own header blocks, received without h2's event machinery (sans-IO).

Every tunnel starts with the same two header blocks: the client's CONNECT (`:method CONNECT`
and `:authority ip:port`, which our codec writes as plain literals without indexing,
`h2private.send_connect`) and the server's 200 (the one byte 0x88). h2 spends 50-100 us on
each of them (frame objects, HPACK, header validation, two state machines, events); here a
block of exactly that shape is recognised on a HEADERS frame carrying END_HEADERS alone, the
stream is opened or moved in h2's own state (`h2private`), and the codec's event is made
directly. Anything else (another client's encoding, Huffman strings, extra headers, a stream
h2 would refuse, a bad authority) returns None and goes to h2 unchanged, in order, so it is
judged exactly as before; the FrameGuard has already counted the frame either way.

Every tunnel also ends with two END_STREAMs, empty DATA frames with that one flag: h2 took
31-45 us to receive one (frame object, two state machines, events); `h2private.take_end_stream`
moves the stream as h2 would and the codec's HalfClosed is made here.
"""
from __future__ import annotations

from . import h2private
from .events import Event, HalfClosed, TunnelOpened, TunnelRequested, parse_authority

_AUTHORITY_CHARS = b"0123456789abcdefABCDEF.:[]"


def take(codec, stream_id: int, block: bytes, ftype: int = h2private.HEADERS) -> Event | None:
    """The event for this HEADERS block, or an empty DATA frame carrying END_STREAM alone
    (each tunnel's two half-closes), if it may skip h2 (it is then in h2's stream state), else None."""
    conn = codec._h2
    if ftype == h2private.DATA:
        return HalfClosed(stream_id) if h2private.take_end_stream(conn, stream_id) else None
    if codec.client_side:
        if block == b"\x88" and h2private.take_status_200(conn, stream_id):
            return TunnelOpened(stream_id)
        return None
    raw = h2private.connect_authority(block)
    # Only the characters of an ip:port (no IPv6 scope id, whose text `ipaddress` hardly
    # checks): nothing h2's inbound header validation would refuse.
    if raw is None or raw.translate(None, _AUTHORITY_CHARS):
        return None
    try:
        authority = parse_authority(raw.decode("ascii"))   # the slow path's own check
    except ValueError:
        return None   # h2 and the slow path judge it (a 400)
    if not h2private.take_connect(conn, stream_id):
        return None
    codec._unanswered.add(stream_id)
    return TunnelRequested(stream_id, authority, ())
