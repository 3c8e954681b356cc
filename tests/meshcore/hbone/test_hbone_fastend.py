"""Each tunnel's two END_STREAMs, sent and received without h2's frame machinery
(h2private.end_stream, take_end_stream), leave h2's state exactly as h2's own would, and
anything but the plain case is still judged by h2."""
from __future__ import annotations

import h2.connection
import h2.events
import pytest

from meshcore.hbone import codec as c, h2private
from meshcore.hbone.errors import LocalProtocolError, RemoteProtocolError

from .test_hbone_codec import only, pair
from .test_hbone_fastheaders import answered


def end_frame(sid: int) -> bytes:
    return h2private.HEADER.pack(0, 0, h2private.DATA, h2private.END_STREAM, sid)


def h2_end_frame(sid: int) -> bytes:
    """What h2's own end_stream writes, on a fresh h2 client with an open stream."""
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    conn.data_to_send()
    conn.end_stream(sid)
    return conn.data_to_send()


def opened() -> tuple[c.ClientConnection, c.ServerConnection, int]:
    cl, sv = pair()
    sid, wire = answered(cl, sv)
    cl.receive_data(wire)
    return cl, sv, sid


def states(cl: c.ClientConnection, sv: c.ServerConnection, sid: int) -> tuple:
    return tuple((s.state_machine.state, s.state_machine.stream_closed_by)
                 for s in (cl._h2.streams[sid], sv._h2.streams[sid]))


def test_the_frame_written_is_h2s_own():
    cl, _, sid = opened()
    cl.half_close(sid)
    assert cl.data_to_send() == end_frame(sid) == h2_end_frame(sid)


@pytest.mark.parametrize("first", ["client", "server"])
def test_both_halves_close_leaving_h2_in_the_state_its_own_path_leaves(first):
    fast, slow = opened(), opened()
    for (cl, sv, sid), plain in ((fast, False), (slow, True)):
        order = [(cl, sv), (sv, cl)] if first == "client" else [(sv, cl), (cl, sv)]
        for sender, receiver in order:
            if plain:   # h2's own send, and its own receive of the frame
                sender._h2.end_stream(sid)
                evs = [e for e in receiver._h2.receive_data(sender.data_to_send()) if isinstance(e, h2.events.StreamEnded)]
                assert [e.stream_id for e in evs] == [sid]
            else:
                sender.half_close(sid)
                assert receiver.receive_data(sender.data_to_send()) == [c.HalfClosed(sid)]
    assert states(*fast) == states(*slow)
    assert fast[0]._h2.open_outbound_streams == fast[1]._h2.open_inbound_streams == 0


def test_a_stream_ended_twice_is_still_refused_by_h2():
    cl, sv, sid = opened()
    cl.half_close(sid)
    sv.receive_data(cl.data_to_send())
    with pytest.raises(LocalProtocolError):
        cl.half_close(sid)
    # a second END_STREAM arriving for it is h2's to judge, as before: a stream error,
    # the stream reset with STREAM_CLOSED (RFC 9113 5.1, half-closed (remote))
    assert sv.receive_data(end_frame(sid)) == [c.Reset(sid, 5)]
    assert sv.data_to_send() == h2private.HEADER.pack(0, 4, 3, 0, sid) + (5).to_bytes(4, "big")


def test_an_end_stream_before_the_response_goes_to_h2_and_is_refused():
    cl, sv = pair()
    sid = cl.open_tunnel("10.0.0.1:80")
    sv.receive_data(cl.data_to_send())
    # the server ends its half before answering: h2 says data before headers is a protocol error
    with pytest.raises(RemoteProtocolError):
        cl.receive_data(end_frame(sid))


def test_an_end_stream_for_a_stream_never_opened_goes_to_h2_and_is_refused():
    _, sv = pair()
    with pytest.raises(RemoteProtocolError):
        sv.receive_data(end_frame(7))


def test_end_stream_with_data_or_padding_still_goes_through_h2():
    cl, sv, sid = opened()
    cl._h2.send_data(sid, b"last", end_stream=True)
    evs = sv.receive_data(cl.data_to_send())
    assert only(evs, c.Data)[0].data == b"last" and only(evs, c.HalfClosed) == [c.HalfClosed(sid)]
