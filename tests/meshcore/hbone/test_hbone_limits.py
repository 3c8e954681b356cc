"""HTTP/2 limits, sans-IO: each limit of `limits.Limits` is refused with GOAWAY(ENHANCE_YOUR_CALM)."""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import pytest

from meshcore.hbone import codec as c
from meshcore.hbone.limits import ENHANCE_YOUR_CALM, FrameGuard, LimitExceeded, Limits


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def attacker() -> tuple[h2.connection.H2Connection, bytes]:
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h.initiate_connection()
    return h, h.data_to_send()


def goaway_code(server: c.ServerConnection) -> int:
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h.initiate_connection()
    codes = [ev.error_code for ev in h.receive_data(server.data_to_send())
             if isinstance(ev, h2.events.ConnectionTerminated)]
    assert codes, "no GOAWAY"
    return codes[0]


def refused(server: c.ServerConnection, data: bytes, limit: str) -> None:
    with pytest.raises(LimitExceeded) as e:
        server.receive_data(data)
    assert e.value.limit == limit
    assert goaway_code(server) == ENHANCE_YOUR_CALM
    assert server.closed


def test_rapid_reset_pairs_are_refused_as_premature_resets():
    sv = c.ServerConnection(Limits(max_premature_resets=10))
    h, out = attacker()
    sv.receive_data(out)
    for _ in range(10):   # within the budget: answered as usual
        sid = h.get_next_available_stream_id()
        h.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
        h.reset_stream(sid)
    events = sv.receive_data(h.data_to_send())
    assert sum(isinstance(ev, c.Reset) for ev in events) == 10
    sid = h.get_next_available_stream_id()
    h.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    h.reset_stream(sid)
    refused(sv, h.data_to_send(), "premature_resets")


def test_answered_streams_reset_count_only_against_the_reset_budget():
    sv = c.ServerConnection(Limits(max_premature_resets=1, max_resets=3))
    h, out = attacker()
    sv.receive_data(out)

    def open_answer_reset() -> bytes:
        sid = h.get_next_available_stream_id()
        h.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
        sv.receive_data(h.data_to_send())
        sv.accept(sid)
        h.receive_data(sv.data_to_send())
        h.reset_stream(sid)
        return h.data_to_send()

    for _ in range(3):
        sv.receive_data(open_answer_reset())   # answered first: not premature
    refused(sv, open_answer_reset(), "resets")


@pytest.mark.parametrize("ftype", [0x4, 0x6])   # SETTINGS, PING
def test_settings_and_ping_floods_are_refused(ftype):
    sv = c.ServerConnection(Limits(max_control_frames=50))
    _, out = attacker()
    sv.receive_data(out)   # the preface's SETTINGS counts as one
    payload = b"" if ftype == 0x4 else b"12345678"
    sv.receive_data(frame(ftype, 0, 0, payload) * 49)
    sv.data_to_send()
    refused(sv, frame(ftype, 0, 0, payload), "control_frames")


def test_acks_do_not_count_as_a_flood():
    sv = c.ServerConnection(Limits(max_control_frames=5))
    _, out = attacker()
    sv.receive_data(out)
    sv.receive_data(frame(0x6, 0x1, 0, b"12345678") * 100)   # PING ACKs
    assert not sv.closed


def test_header_block_is_limited_as_it_arrives_and_continuation_counts():
    sv = c.ServerConnection(Limits(max_header_block=4096))
    _, out = attacker()
    sv.receive_data(out)
    sv.receive_data(frame(0x1, 0, 1, b"\x82" * 2000))   # HEADERS without END_HEADERS
    assert sv.header_block_open
    sv.receive_data(frame(0x9, 0, 1, b"\x00" * 1000))
    # Only the header of the next CONTINUATION arrived: refused before its payload is buffered.
    refused(sv, frame(0x9, 0, 1, b"\x00" * 2000)[:9], "header_block")


def test_a_header_frame_above_the_limit_is_refused_on_its_header():
    sv = c.ServerConnection()
    _, out = attacker()
    sv.receive_data(out)
    refused(sv, struct.pack(">BHBBI", 0, 60000, 0x1, 0x4, 1), "header_block")   # a 60,000-byte HEADERS


def test_a_completed_header_block_closes_and_passes():
    sv = c.ServerConnection()
    h, out = attacker()
    sv.receive_data(out)
    h.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = sv.receive_data(h.data_to_send())
    assert [type(ev) for ev in events if isinstance(ev, c.TunnelRequested)] == [c.TunnelRequested]
    assert not sv.header_block_open


def test_rates_are_counted_per_window():
    now = [0.0]
    guard = FrameGuard(Limits(max_control_frames=2, window=10), clock=lambda: now[0])
    guard.frame(0x6, 0, 8)
    guard.frame(0x6, 0, 8)
    now[0] = 10.0   # a new window
    guard.frame(0x6, 0, 8)
    guard.frame(0x6, 0, 8)
    with pytest.raises(LimitExceeded):
        guard.frame(0x6, 0, 8)


def test_limits_are_validated_with_their_names():
    with pytest.raises(ValueError, match="max_resets"):
        Limits(max_resets=0)
    with pytest.raises(ValueError, match="header_block_timeout"):
        Limits(header_block_timeout=0)


def test_streams_beyond_the_concurrent_limit_end_the_connection_as_a_limit():
    sv = c.ServerConnection(Limits(max_concurrent_streams=2))
    h, out = attacker()
    sv.receive_data(out)
    h.receive_data(sv.data_to_send())   # our SETTINGS; h2 then keeps to them, so write the third by hand
    for sid in (1, 3):
        h.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    sv.receive_data(h.data_to_send())
    block = h2.connection.H2Connection().encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    with pytest.raises(LimitExceeded) as e:
        sv.receive_data(frame(0x1, 0x4, 5, block))
    assert e.value.limit == "concurrent_streams" and sv.closed


def test_the_client_side_has_the_same_limits():
    cl = c.ClientConnection(Limits(max_control_frames=5))
    sv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    sv.initiate_connection()
    cl.receive_data(sv.data_to_send())   # the server's SETTINGS
    with pytest.raises(LimitExceeded) as e:
        cl.receive_data(frame(0x6, 0, 0, b"12345678") * 10)
    assert e.value.limit == "control_frames" and cl.closed
