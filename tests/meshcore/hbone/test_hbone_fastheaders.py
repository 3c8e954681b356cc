"""The tunnel's 200 taken without h2 (h2private.take_status_200) leaves h2 judging the rest
as before: the stream carries data and ends, and a second header block is still an error."""
from __future__ import annotations

import pytest

from meshcore.hbone import codec as c, h2private
from meshcore.hbone.errors import RemoteProtocolError

from .test_hbone_codec import only, pair

OK_FRAME = bytes.fromhex("000001" "01" "04") + (1).to_bytes(4, "big") + bytes([h2private.STATUS_200])


def answered(cl: c.ClientConnection, sv: c.ServerConnection) -> tuple[int, bytes]:
    """A tunnel the server accepted: its stream id and the server's bytes for the client."""
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    sv.accept(sid)
    return sid, sv.data_to_send()


def test_the_200_is_the_one_frame_the_fast_path_knows():
    _, wire = answered(*pair())
    assert wire == OK_FRAME   # h2's own encoding of [(":status", "200")], END_HEADERS


def test_a_fresh_connection_opens_a_tunnel_with_the_200_after_the_settings():
    cl = c.ClientConnection()
    sid, wire = answered(cl, c.ServerConnection())
    assert only(cl.receive_data(wire), c.TunnelOpened) == [c.TunnelOpened(sid)]
    stream = cl._h2.streams[sid]
    assert stream.state_machine.headers_received   # recorded as h2's receive would


def test_after_the_fast_200_data_flows_and_both_halves_close():
    cl, sv = pair()
    sid, wire = answered(cl, sv)
    assert only(cl.receive_data(wire), c.TunnelOpened) == [c.TunnelOpened(sid)]
    sv.send(sid, b"hello")
    sv.half_close(sid)
    evs = cl.receive_data(sv.data_to_send())
    assert only(evs, c.Data)[0].data == b"hello" and only(evs, c.HalfClosed) == [c.HalfClosed(sid)]
    cl.half_close(sid)
    assert only(sv.receive_data(cl.data_to_send()), c.HalfClosed) == [c.HalfClosed(sid)]
    assert cl.open_outbound_streams == 0


def test_a_second_200_on_the_stream_goes_to_h2_and_is_refused():
    cl, sv = pair()
    cl.receive_data(answered(cl, sv)[1])
    # the same bytes again: trailers without END_STREAM, which h2 refuses
    with pytest.raises(RemoteProtocolError):
        cl.receive_data(OK_FRAME)


def test_a_200_for_a_stream_never_opened_goes_to_h2_and_is_refused():
    cl, _ = pair()
    with pytest.raises(RemoteProtocolError):
        cl.receive_data(OK_FRAME[:5] + (5).to_bytes(4, "big") + OK_FRAME[9:])


def test_the_server_side_never_takes_it():
    _, sv = pair()
    # a client sending a response-shaped block on its own stream: h2 judges it (no :method)
    with pytest.raises(RemoteProtocolError, match=":method"):
        sv.receive_data(OK_FRAME)
