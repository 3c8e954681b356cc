"""Fuzz: whatever bytes a peer sends, the server codec only raises RemoteProtocolError."""
from __future__ import annotations

import h2.config
import h2.connection
from hypothesis import HealthCheck, given, settings, strategies as st

from meshcore.hbone import codec as c
from meshcore.hbone.errors import RemoteProtocolError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def valid_client_bytes() -> bytes:
    cl = c.ClientConnection()
    sid = cl.open_tunnel("10.0.0.1:80", [("baggage", "a=b")])
    cl.send(sid, b"payload" * 10)
    cl.half_close(sid)
    cl.reset(cl.open_tunnel("10.0.0.2:81"))
    return cl.data_to_send()


VALID = valid_client_bytes()


def feed(chunks) -> None:
    sv = c.ServerConnection()
    for chunk in chunks:
        try:
            events = sv.receive_data(chunk)
        except RemoteProtocolError:
            assert sv.closed
            return
        for ev in events:
            assert isinstance(ev, (c.TunnelRequested, c.BadRequest, c.Data, c.HalfClosed, c.Reset,
                                   c.ConnectionClosed, c.GoingAway, c.WindowOpened))
        sv.data_to_send()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_garbage_only_raises_remote_protocol_error(chunks):
    feed(chunks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.binary(max_size=200), max_size=4))
def test_garbage_after_valid_preface(frame_bytes, more):
    feed([PREFACE, frame_bytes, *more])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, 64))
def test_mutated_valid_stream(flips, split):
    data = bytearray(VALID)
    for pos, val in flips:
        data[pos] = val
    feed([bytes(data[i:i + split]) for i in range(0, len(data), split)])


def test_fuzz_harness_can_fail():
    # The invariant is not vacuous: a plaintext HTTP/1.1 request really is rejected.
    sv = c.ServerConnection()
    try:
        sv.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    except RemoteProtocolError as e:
        assert "malformed" in str(e)
    else:
        raise AssertionError("plaintext HTTP/1.1 was accepted as HTTP/2")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 20), st.binary(max_size=50), st.lists(st.binary(max_size=100), max_size=3))
def test_goaway_then_garbage(last_stream_id, code, debug, more):
    # A peer that says goodbye, then keeps talking nonsense.
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h.initiate_connection()
    h.close_connection(code, additional_data=debug, last_stream_id=last_stream_id)
    feed([h.data_to_send(), *more])
