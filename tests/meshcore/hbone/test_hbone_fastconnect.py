"""The tunnel's CONNECT written and taken without h2's frame machinery (h2private.send_connect,
take_connect, send_status_200; fastheaders) interoperates with a stock h2 peer both ways, with
HPACK dynamic-table state present from other header blocks, and leaves every other header
block, and every limit, to h2 and the FrameGuard as before."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from meshcore.hbone import codec as c, h2private
from meshcore.hbone.errors import RemoteProtocolError
from meshcore.hbone.limits import LimitExceeded, Limits

from .test_hbone_codec import only, pair

EXTRA = [("baggage", "k=v"), ("traceparent", "00-ab-cd-01")]


def stock(client_side: bool) -> h2.connection.H2Connection:
    """An h2 peer as anyone would configure it (inbound headers validated, Huffman, indexing)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8"))
    conn.initiate_connection()
    return conn


def wired(ours: c.ClientConnection | c.ServerConnection, theirs: h2.connection.H2Connection) -> list:
    """Exchange bytes until both sides are quiet; the stock side's events."""
    events = []
    for _ in range(4):
        out = ours.data_to_send()
        if out:
            events += theirs.receive_data(out)
        back = theirs.data_to_send()
        if back:
            ours.receive_data(back)
    return events


def connect_frame(sid: int, authority: bytes, prefix: bytes = h2private.CONNECT_PREFIX) -> bytes:
    block = prefix + bytes([len(authority)]) + authority
    return len(block).to_bytes(3, "big") + b"\x01\x04" + sid.to_bytes(4, "big") + block


def count_h2_header_frames(monkeypatch, conn) -> list:
    """Every header block h2's HPACK decoder sees (h2 dispatches frames through a table of its own)."""
    seen = []
    real = conn.decoder.decode

    def spy(data, *args, **kw):
        seen.append(bytes(data))
        return real(data, *args, **kw)
    monkeypatch.setattr(conn.decoder, "decode", spy)
    return seen


def test_the_connect_on_the_wire_is_plain_literals_without_indexing():
    cl, _ = pair()
    sid = cl.open_tunnel("10.244.2.5:8080")
    assert cl.data_to_send() == connect_frame(sid, b"10.244.2.5:8080")
    stream = cl._h2.streams[sid]
    assert stream.state_machine.headers_sent and stream.open   # recorded as h2's send_headers would


def test_a_stock_h2_server_reads_our_connects_among_indexed_header_blocks():
    cl, theirs = c.ClientConnection(), stock(client_side=False)
    wired(cl, theirs)
    got = []
    # h2-encoded blocks (the caller's headers: checked, Huffman, indexed into both tables) between fast ones
    for authority, extra in [("10.0.0.1:80", EXTRA), ("10.0.0.1:80", ()), ("[fd00::1]:443", EXTRA),
                             ("10.0.0.1:80", EXTRA), ("10.0.0.2:81", ())]:
        sid = cl.open_tunnel(authority, extra)
        got += [(ev.stream_id, ev.headers) for ev in wired(cl, theirs) if isinstance(ev, h2.events.RequestReceived)]
        assert got[-1] == (sid, [(":method", "CONNECT"), (":authority", authority), *extra])
    assert len(theirs.decoder.header_table.dynamic_entries) >= 3   # the indexed blocks did use the table
    # the stock server answers with its encoder (a refusal with a reason indexes it), then 200s
    theirs.send_headers(3, [(":status", "403"), (c.REASON_HEADER, "no")], end_stream=True)
    theirs.send_headers(5, [(":status", "200")])
    theirs.send_headers(1, [(":status", "200")])
    evs = cl.receive_data(theirs.data_to_send())
    assert only(evs, c.TunnelRefused) == [c.TunnelRefused(3, 403, "no")]
    assert only(evs, c.TunnelOpened) == [c.TunnelOpened(5), c.TunnelOpened(1)]


def test_a_stock_h2_client_is_served_and_reads_our_fast_200():
    sv, theirs = c.ServerConnection(), stock(client_side=True)
    wired(sv, theirs)
    for sid, extra in [(1, EXTRA), (3, ()), (5, EXTRA)]:   # Huffman and indexing: h2's decoder, our events
        theirs.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.7:8080"), *extra])
        evs = sv.receive_data(theirs.data_to_send())
        assert only(evs, c.TunnelRequested) == [c.TunnelRequested(sid, ("10.0.0.7", 8080), tuple(extra))]
        sv.accept(sid)
        assert sv._h2.streams[sid].state_machine.headers_sent
        events = theirs.receive_data(sv.data_to_send())
        assert [(e.stream_id, e.headers) for e in events] == [(sid, [(":status", "200")])]
    theirs.send_data(5, b"ping")
    assert only(sv.receive_data(theirs.data_to_send()), c.Data)[0].data == b"ping"


def test_our_server_takes_our_connects_without_h2_among_indexed_blocks(monkeypatch):
    cl, sv = pair()
    seen = count_h2_header_frames(monkeypatch, sv._h2)
    sids = [cl.open_tunnel("10.0.0.1:80", EXTRA), cl.open_tunnel("10.0.0.1:80"),
            cl.open_tunnel("10.0.0.1:80", EXTRA), cl.open_tunnel("[fd00::2]:8443")]
    evs = only(sv.receive_data(cl.data_to_send()), c.TunnelRequested)
    assert evs == [c.TunnelRequested(sids[0], ("10.0.0.1", 80), tuple(EXTRA)),
                   c.TunnelRequested(sids[1], ("10.0.0.1", 80), ()),
                   c.TunnelRequested(sids[2], ("10.0.0.1", 80), tuple(EXTRA)),
                   c.TunnelRequested(sids[3], ("fd00::2", 8443), ())]
    assert len(seen) == 2   # only the blocks with the caller's headers went through h2
    for sid in sids:
        sv.accept(sid)
    assert only(cl.receive_data(sv.data_to_send()), c.TunnelOpened) == [c.TunnelOpened(s) for s in sids]
    cl.send(sids[1], b"hi")
    cl.half_close(sids[1])
    evs = sv.receive_data(cl.data_to_send())
    assert only(evs, c.Data)[0].data == b"hi" and only(evs, c.HalfClosed) == [c.HalfClosed(sids[1])]


def test_after_a_table_size_change_the_connect_goes_through_h2():
    cl, theirs = c.ClientConnection(), stock(client_side=False)
    wired(cl, theirs)
    theirs.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    wired(cl, theirs)
    cl.open_tunnel("10.0.0.1:80")
    wire = cl.data_to_send()
    assert wire[9] == 0x20   # h2 leads the block with the size update RFC 7541 4.2 requires
    (ev,) = [e for e in theirs.receive_data(wire) if isinstance(e, h2.events.RequestReceived)]
    assert ev.headers == [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]
    cl.open_tunnel("10.0.0.2:80")
    assert cl.data_to_send() == connect_frame(3, b"10.0.0.2:80")   # owed once, then fast again


def test_a_bad_authority_in_our_encoding_is_judged_by_the_slow_path():
    _, sv = pair()
    evs = sv.receive_data(connect_frame(1, b"example.com:80"))
    assert only(evs, c.BadRequest) and only(evs, c.BadRequest)[0].status == 400
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(connect_frame(3, b"10.0.0.1:80\r\n"))   # h2 refuses the CR/LF


def test_connects_over_the_concurrency_limit_are_refused_as_before():
    cl, sv = c.ClientConnection(), c.ServerConnection(Limits(max_concurrent_streams=2))
    wire = b"".join(connect_frame(sid, b"10.0.0.1:80") for sid in (1, 3, 5))
    sv.receive_data(cl.data_to_send())
    with pytest.raises(LimitExceeded) as e:
        sv.receive_data(wire)
    assert e.value.limit == "concurrent_streams"


def test_a_stream_id_going_backwards_or_even_is_a_protocol_error():
    _, sv = pair()
    sv.receive_data(connect_frame(5, b"10.0.0.1:80"))
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(connect_frame(3, b"10.0.0.1:80"))
    _, sv = pair()
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(connect_frame(2, b"10.0.0.1:80"))


def test_a_connect_inside_another_header_block_is_a_protocol_error():
    _, sv = pair()
    open_block = connect_frame(1, b"10.0.0.1:80")
    open_block = open_block[:4] + b"\x00" + open_block[5:]   # HEADERS without END_HEADERS
    sv.receive_data(open_block)
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(connect_frame(3, b"10.0.0.2:80"))


def test_a_connect_with_end_stream_or_another_method_goes_to_h2():
    _, sv = pair()
    frame = bytearray(connect_frame(1, b"10.0.0.1:80"))
    frame[4] = 0x05   # END_HEADERS | END_STREAM: h2 takes it, the half-close comes with it
    evs = sv.receive_data(bytes(frame))
    assert only(evs, c.TunnelRequested) and only(evs, c.HalfClosed) == [c.HalfClosed(1)]
    with pytest.raises(RemoteProtocolError, match=":scheme"):   # h2's judgement of a non-CONNECT request
        sv.receive_data(connect_frame(3, b"10.0.0.1:80", prefix=b"\x02\x07OPTIONS\x01"))


def test_a_fast_connect_reset_before_the_answer_counts_as_premature():
    cl, sv = c.ClientConnection(), c.ServerConnection(Limits(max_premature_resets=1))
    sv.receive_data(cl.data_to_send())
    cl.receive_data(sv.data_to_send())
    with pytest.raises(LimitExceeded) as e:
        for _ in range(2):
            sid = cl.open_tunnel("10.0.0.1:80")
            cl.reset(sid)
            sv.receive_data(cl.data_to_send())
    assert e.value.limit == "premature_resets"


def test_data_or_a_200_inside_another_header_block_is_a_protocol_error():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    cl.receive_data(sv.data_to_send())
    open_block = connect_frame(3, b"10.0.0.2:80")
    sv.receive_data(open_block[:4] + b"\x00" + open_block[5:])   # HEADERS without END_HEADERS
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(b"\x00\x00\x02\x00\x00" + sid.to_bytes(4, "big") + b"hi")   # DATA on the open stream
    cl2, sv2 = pair()
    sid = cl2.open_tunnel("10.0.0.1:80")
    sv2.receive_data(cl2.data_to_send())
    sv2.accept(sid)
    answer = sv2.data_to_send()
    cl2.receive_data(b"\x00\x00\x01\x01\x00" + sid.to_bytes(4, "big") + b"\x88")   # a 200 without END_HEADERS
    with pytest.raises(RemoteProtocolError):
        cl2.receive_data(answer)


def test_closed_streams_are_cleaned_up_once_the_table_holds_the_limit_and_the_limit_holds():
    limit = 4
    cl, sv = c.ClientConnection(), c.ServerConnection(Limits(max_concurrent_streams=limit))
    sv.receive_data(cl.data_to_send())
    cl.receive_data(sv.data_to_send())
    sv.receive_data(cl.data_to_send())
    for _ in range(3 * limit):   # open, answer and end tunnels one at a time, both halves
        sid = cl.open_tunnel("10.0.0.1:80")
        sv.receive_data(cl.data_to_send())
        sv.accept(sid)
        cl.receive_data(sv.data_to_send())
        cl.half_close(sid)
        sv.receive_data(cl.data_to_send())
        sv.half_close(sid)
        cl.receive_data(sv.data_to_send())
        # h2 keeps closed streams until a count walks them: never more than the limit
        assert len(sv._h2.streams) <= limit and len(cl._h2.streams) <= limit
    # with closed streams in the table, `limit` tunnels still open and one more is refused
    for _ in range(limit):
        sid = cl.open_tunnel("10.0.0.1:80")
        assert only(sv.receive_data(cl.data_to_send()), c.TunnelRequested)
    with pytest.raises(LimitExceeded):
        sv.receive_data(connect_frame(sid + 2, b"10.0.0.1:80"))
