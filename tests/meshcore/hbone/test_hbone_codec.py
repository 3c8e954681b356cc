"""Codec pair tests: client bytes -> server events and back, no sockets."""
from __future__ import annotations

import ssl

import h2.connection
import h2.config
import h2.events
import pytest

from meshcore.hbone import codec as c
from meshcore.hbone.errors import LocalProtocolError, RemoteProtocolError, describe_tls_failure


def pair():
    cl, sv = c.ClientConnection(), c.ServerConnection()
    sv.receive_data(cl.data_to_send())
    cl.receive_data(sv.data_to_send())
    sv.receive_data(cl.data_to_send())
    return cl, sv


def only(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_connect_carries_only_method_and_authority_and_extra_headers_pass():
    cl, sv = pair()
    sid = cl.open_tunnel("10.244.2.5:8080", [("baggage", "k=v"), ("traceparent", "00-ab-cd-01")])
    wire = cl.data_to_send()
    assert b":scheme" not in wire and b":path" not in wire
    evs = only(sv.receive_data(wire), c.TunnelRequested)
    assert evs == [c.TunnelRequested(sid, ("10.244.2.5", 8080),
                                     (("baggage", "k=v"), ("traceparent", "00-ab-cd-01")))]


def test_accept_data_half_close_both_ways():
    cl, sv = pair()
    sid = cl.open_tunnel("[fd00::5]:443")
    assert only(sv.receive_data(cl.data_to_send()), c.TunnelRequested)[0].authority == ("fd00::5", 443)
    sv.accept(sid)
    assert only(cl.receive_data(sv.data_to_send()), c.TunnelOpened) == [c.TunnelOpened(sid)]
    assert cl.send(sid, b"ping") == 4
    cl.half_close(sid)
    evs = sv.receive_data(cl.data_to_send())
    assert [e for e in evs if not isinstance(e, c.WindowOpened)] == [c.Data(sid, b"ping", 4), c.HalfClosed(sid)]
    sv.send(sid, b"pong")
    sv.half_close(sid)
    evs = cl.receive_data(sv.data_to_send())
    assert [e for e in evs if not isinstance(e, c.WindowOpened)] == [c.Data(sid, b"pong", 4), c.HalfClosed(sid)]


def test_fast_path_data_events_equal_checked_ones():
    """Flagless DATA frames on open streams become `Data.parsed` events (no checks, no
    per-field setattr); they must be the same events, and still frozen."""
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    cl.send(sid, b"one")
    cl.send(sid, b"two")
    evs = only(sv.receive_data(cl.data_to_send()), c.Data)
    assert evs == [c.Data(sid, b"one", 3), c.Data(sid, b"two", 3)]
    assert hash(evs[0]) == hash(c.Data(sid, b"one", 3))
    with pytest.raises(AttributeError):
        evs[0].data = b"changed"


def test_small_acknowledgements_open_the_windows_once_half_was_read():
    """Acks below half a window are counted without h2 (no WINDOW_UPDATE); the one that
    crosses half hands the whole count back in one update, as h2's rule says."""
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    full = cl.send_window(sid)
    chunk = b"x" * 16384
    sent = 0
    while sent + len(chunk) < c.STREAM_WINDOW // 2:
        assert cl.send(sid, chunk) == len(chunk)
        sent += len(chunk)
        for ev in only(sv.receive_data(cl.data_to_send()), c.Data):
            sv.ack(ev.stream_id, len(ev.data))
        assert sv.data_to_send() == b""   # nothing to say yet
    assert cl.send_window(sid) == full - sent
    assert cl.send(sid, chunk) == len(chunk)   # this one crosses half the stream window
    sent += len(chunk)
    for ev in only(sv.receive_data(cl.data_to_send()), c.Data):
        sv.ack(ev.stream_id, len(ev.data))
    update = sv.data_to_send()
    assert update
    opened = cl.receive_data(update)
    assert c.WindowOpened(sid) in opened
    assert cl.send_window(sid) == full   # everything read was handed back


@pytest.mark.parametrize("status", [400, 401, 403, 503, 504])
def test_refuse_statuses_reach_client(status):
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.refuse(sid, status, "policy deny\r\nx: y")
    evs = cl.receive_data(sv.data_to_send())
    refused = only(evs, c.TunnelRefused)
    assert refused == [c.TunnelRefused(sid, status, "policy deny x: y")]
    assert only(evs, c.HalfClosed) == [c.HalfClosed(sid)]


def test_reset_is_reported_as_abort():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    cl.reset(sid)
    assert only(sv.receive_data(cl.data_to_send()), c.Reset) == [c.Reset(sid, 8)]
    cl.reset(sid)   # resetting twice is harmless


def raw_client_request(headers):
    """A plain h2 client, to send what our codec would never send."""
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                                             validate_outbound_headers=False))
    h.initiate_connection()
    h.send_headers(1, headers, end_stream=False)
    return h


@pytest.mark.parametrize("headers,status", [
    ([(":method", "CONNECT"), (":authority", "web.default.svc:80")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:0")], 400),
    ([(":method", "CONNECT"), (":authority", "10.0.0.1:70000")], 400),
    ([(":method", "CONNECT"), (":authority", "[fd00::1]")], 400),
    ([(":method", "GET"), (":authority", "10.0.0.1:80"), (":scheme", "https"), (":path", "/")], 405),
])
def test_bad_requests_answered_by_codec(headers, status):
    sv = c.ServerConnection()
    h = raw_client_request(headers)
    evs = sv.receive_data(h.data_to_send())
    bad = only(evs, c.BadRequest)
    assert len(bad) == 1 and bad[0].status == status and bad[0].reason
    assert not only(evs, c.TunnelRequested)
    answers = [e for e in h.receive_data(sv.data_to_send()) if isinstance(e, h2.events.ResponseReceived)]
    assert dict(answers[0].headers)[":status"] == str(status)


def test_connect_with_scheme_and_path_is_a_protocol_error():
    sv = c.ServerConnection()
    with pytest.raises(RemoteProtocolError) as e:
        sv.receive_data(raw_client_request([(":method", "CONNECT"), (":authority", "10.0.0.1:80"),
                                            (":scheme", "https"), (":path", "/")]).data_to_send())
    assert e.value.status_hint == 400
    assert b"" != sv.data_to_send()   # GOAWAY queued for the caller to flush
    assert sv.receive_data(b"more") == []


def test_flow_control_send_stops_at_window_and_ack_reopens():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    big = b"x" * (c.STREAM_WINDOW + 1000)
    assert cl.send(sid, big) == c.STREAM_WINDOW
    assert cl.send(sid, b"more") == 0
    data = only(sv.receive_data(cl.data_to_send()), c.Data)
    assert sum(len(d.data) for d in data) == c.STREAM_WINDOW
    assert max(len(d.data) for d in data) == c.MAX_FRAME_SIZE   # large frames are in force
    assert only(cl.receive_data(sv.data_to_send()), c.WindowOpened) == []   # nothing read yet
    sv.ack(sid, c.STREAM_WINDOW)
    assert c.WindowOpened(sid) in cl.receive_data(sv.data_to_send())
    assert cl.send(sid, b"more") == 4


def test_oversized_headers_close_the_connection():
    cl, sv = pair()
    cl.open_tunnel("10.0.0.1:80", [("x-big", "a" * (c.MAX_HEADER_LIST_SIZE + 10))])
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(cl.data_to_send())


def test_goaway_with_error_becomes_connection_closed():
    cl, sv = pair()
    sv.close(2, "internal error")
    evs = cl.receive_data(sv.data_to_send())
    assert only(evs, c.ConnectionClosed) == [c.ConnectionClosed(2, "internal error", 0)]
    assert cl.closed


def test_graceful_goaway_lets_open_streams_finish_both_ways():
    cl, sv = pair()
    s1 = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(s1)
    cl.receive_data(sv.data_to_send())
    s3 = cl.open_tunnel("10.0.0.1:81")       # in flight when the server starts draining
    queued = cl.send(s1, b"queued before the GOAWAY arrived")
    sv.drain("pod shutting down")
    assert sv.going_away and not sv.closed
    evs = cl.receive_data(sv.data_to_send())
    assert only(evs, c.GoingAway) == [c.GoingAway(s1, "pod shutting down")]
    assert cl.going_away and not cl.closed and s3 > s1
    with pytest.raises(LocalProtocolError, match="going away"):
        cl.open_tunnel("10.0.0.1:82")
    # Stream 1 goes on: bytes queued before the GOAWAY are not lost, data flows both ways.
    cl.half_close(s1)
    evs = sv.receive_data(cl.data_to_send())
    assert b"".join(e.data for e in only(evs, c.Data) if e.stream_id == s1)[:queued] == b"queued before the GOAWAY arrived"
    assert c.HalfClosed(s1) in evs
    sv.send(s1, b"bye")
    sv.half_close(s1)
    evs = cl.receive_data(sv.data_to_send())
    assert c.Data(s1, b"bye", 3) in evs and c.HalfClosed(s1) in evs


@pytest.mark.parametrize("bad", ["", "10.0.0.1", "host:80", "10.0.0.1:x", "[::1:80", "1.2.3.4:65536"])
def test_local_misuse_raises_local_error(bad):
    cl, _ = pair()
    with pytest.raises(LocalProtocolError):
        cl.open_tunnel(bad)


def test_refuse_with_200_is_misuse():
    _, sv = pair()
    with pytest.raises(LocalProtocolError):
        sv.refuse(1, 200)


@pytest.mark.parametrize("text,server,expect", [
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", False, "not signed by the mesh CA"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", True, "client 1.2.3.4:5 presented a certificate not signed"),
    ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", False, "does not trust our certificate"),
    ("[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return", True, "sent no client certificate"),
    ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert", False, "sent no client certificate"),
    ("[SSL: HTTP_REQUEST] http request", True, "did not speak TLS 1.3"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number", True, "plaintext or garbage"),
    ("[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] expired", False, "expired certificate"),
    ("[SSL: SOMETHING_ELSE] odd", False, "TLS handshake with peer 1.2.3.4:5 failed"),
])
def test_describe_tls_failure(text, server, expect):
    import trio
    err = trio.BrokenResourceError("x")
    err.__cause__ = ssl.SSLError(1, text)
    assert expect in describe_tls_failure(err, "1.2.3.4:5", we_are_server=server)


@pytest.mark.parametrize("authority,want", [
    ("10.244.2.5:8080", ("10.244.2.5", 8080)),
    ("[fd00::1]:15008", ("fd00::1", 15008)),
    ("[::ffff:10.0.0.1]:1", ("::ffff:a00:1", 1)),
])
def test_parse_and_format_authority(authority, want):
    assert c.parse_authority(authority) == want
    assert c.parse_authority(c.format_authority(*want)) == want


def test_bad_request_reset_in_the_same_batch_is_not_an_error():
    # Found by the fuzzer: h2 processes the whole batch before we answer the bad request.
    h = raw_client_request([(":method", "CONNECT"), (":authority", "nonsense")])
    h.reset_stream(1)
    sv = c.ServerConnection()
    evs = sv.receive_data(h.data_to_send())
    assert only(evs, c.BadRequest)[0].status == 400 and only(evs, c.Reset) == [c.Reset(1, 0)]


@pytest.mark.parametrize("make", [
    lambda: c.TunnelOpened(0),
    lambda: c.TunnelRefused(1, 200 * 10),
    lambda: c.BadRequest(-1, 400, "x"),
    lambda: c.Data(1, b"abc", 2),
    lambda: c.TunnelRequested(1, ("web", 80)),
    lambda: c.WindowOpened(-1),
])
def test_events_are_validated_on_construction(make):
    with pytest.raises(ValueError):
        make()


def test_non_numeric_status_from_server_is_a_remote_error():
    cl = c.ClientConnection()
    sid = cl.open_tunnel("10.0.0.1:80")
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                                             validate_outbound_headers=False,
                                                             validate_inbound_headers=False))
    h.initiate_connection()
    h.receive_data(cl.data_to_send())
    h.send_headers(sid, [(":status", "abc")])
    with pytest.raises(RemoteProtocolError):
        cl.receive_data(h.data_to_send())


# ---- the DATA fast path (h2private): same results as h2, whatever the byte boundaries ----

def _open_pair():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    return cl, sv, sid


def test_fast_data_survives_any_split_and_keeps_order_with_end_stream():
    cl, sv, sid = _open_pair()
    chunks = [bytes([i]) * (i * 37 + 1) for i in range(40)]
    for chunk in chunks:
        assert cl.send(sid, chunk) == len(chunk)
    cl.half_close(sid)
    wire = cl.data_to_send()
    events = []
    for i in range(len(wire)):                 # one byte at a time: every frame arrives in pieces
        events += sv.receive_data(wire[i:i + 1])
    data = [e for e in events if isinstance(e, (c.Data, c.HalfClosed))]
    assert b"".join(e.data for e in data if isinstance(e, c.Data)) == b"".join(chunks)
    assert isinstance(data[-1], c.HalfClosed)   # END_STREAM after every byte, not before


def test_fast_data_is_accounted_in_h2_windows():
    cl, sv, sid = _open_pair()
    before = sv._h2._inbound_flow_control_window_manager.current_window_size
    cl.send(sid, b"x" * 1000)
    sv.receive_data(cl.data_to_send())
    assert sv._h2._inbound_flow_control_window_manager.current_window_size == before - 1000
    assert cl.send_window(sid) == c.STREAM_WINDOW - 1000


def test_data_beyond_the_window_is_a_flow_control_error():
    cl, sv, sid = _open_pair()
    # A peer that ignores our window: one frame more than the whole stream window allows.
    n = c.STREAM_WINDOW // c.MAX_FRAME_SIZE
    frame = bytes([(c.MAX_FRAME_SIZE >> 16) & 0xFF, (c.MAX_FRAME_SIZE >> 8) & 0xFF, c.MAX_FRAME_SIZE & 0xFF, 0, 0]) \
        + sid.to_bytes(4, "big") + b"z" * c.MAX_FRAME_SIZE
    with pytest.raises(RemoteProtocolError, match="malformed HTTP/2"):
        for _ in range(n + 1):
            sv.receive_data(frame)
    assert sv.closed and b"\x07" in sv.data_to_send()   # GOAWAY queued


def test_oversized_data_frame_after_good_ones_is_rejected():
    cl, sv, sid = _open_pair()
    cl.send(sid, b"ok")
    good = cl.data_to_send()
    big = (c.MAX_FRAME_SIZE + 1).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big")
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(good + big)


def test_data_on_a_reset_stream_goes_to_h2_and_is_not_delivered():
    cl, sv, sid = _open_pair()
    cl.send(sid, b"early")
    early = cl.data_to_send()
    sv.reset(sid)
    events = sv.receive_data(early)
    assert not [e for e in events if isinstance(e, c.Data)]


def test_take_output_hands_over_queued_frames_in_order_across_a_receive():
    """take_output() is data_to_send() without the copy: h2's buffer itself, then a fresh
    one. Output queued before a receive_data (kept aside there, as h2 would drop it on a
    GOAWAY) still leaves first, and nothing is lost or repeated."""
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    assert cl.send(sid, b"a" * 70000) == 70000          # fast path: straight into h2's buffer
    first = bytes(cl._h2._data_to_send)
    sv.send(sid, b"pong")
    cl.receive_data(sv.data_to_send())                  # cl's queued frames are set aside...
    assert cl.send(sid, b"b" * 10) == 10                # ...and more queue behind them
    out = cl.take_output()
    assert out[:len(first)] == first and len(out) == len(first) + 9 + 10
    assert not cl.take_output() and cl.data_to_send() == b""
    evs = sv.receive_data(bytes(out))
    assert b"".join(bytes(e.data) for e in evs if isinstance(e, c.Data)) == b"a" * 70000 + b"b" * 10


def test_take_output_does_not_copy_a_lone_buffer():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    cl.send(sid, b"x" * 50000)
    queued = cl._h2._data_to_send
    assert cl.take_output() is queued and cl._h2._data_to_send is not queued
