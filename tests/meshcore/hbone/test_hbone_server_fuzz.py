"""Fuzz the HBONE server's frame handling over real TLS (issue 13).

Hypothesis builds sequences of valid and invalid frames (CONNECT requests, DATA, resets,
window updates, settings, pings, CONTINUATION, GOAWAY, unknown types, any flags and
stream ids) and sends them on an authenticated connection to a real `serve_hbone`.
Invariants: the server never raises (serve_hbone would end the run), the connection's
state is released once it closes, and another client's tunnel is served right after.
Bounded: a few dozen examples, each a fresh server, so it runs in seconds.
"""
from __future__ import annotations

import struct

import hpack
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.server import ServerStats, serve_hbone

from .certs import TestCA, client_ctx, server_ctx
from .conftest import CLIENT_ID, SERVER_ID, echo

CA = TestCA("tt-hbone-fuzz-ca")
CLIENT, SERVER = CA.issue(CLIENT_ID), CA.issue(SERVER_ID)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CONNECT_BLOCK = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", "127.0.0.1:9")])


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


stream_ids = st.sampled_from([0, 1, 3, 5, 7, 2, 2**31 - 1])
payloads = st.binary(max_size=64)
frames = st.one_of(
    st.builds(lambda f, s: frame(0x1, f, s, CONNECT_BLOCK), st.sampled_from([0x4, 0x5, 0x0, 0x24]), stream_ids),
    st.builds(lambda f, s, p: frame(0x0, f, s, p), st.sampled_from([0, 1, 8]), stream_ids, payloads),
    st.builds(lambda s, code: frame(0x3, 0, s, struct.pack(">I", code)), stream_ids, st.integers(0, 20)),
    st.builds(lambda s, inc: frame(0x8, 0, s, struct.pack(">I", inc)), stream_ids, st.integers(0, 2**31 - 1)),
    st.builds(lambda pairs, ack: frame(0x4, ack, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs)),
              st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=4), st.sampled_from([0, 1])),
    st.builds(lambda p, ack: frame(0x6, ack, 0, p), st.binary(min_size=8, max_size=8), st.sampled_from([0, 1])),
    st.builds(lambda f, s, p: frame(0x9, f, s, p), st.sampled_from([0, 0x4]), stream_ids, payloads),
    st.builds(lambda last, code: frame(0x7, 0, 0, struct.pack(">II", last, code)), st.integers(0, 9), st.integers(0, 13)),
    st.builds(frame, st.integers(0, 255), st.integers(0, 255), stream_ids, payloads),   # anything at all
)


async def one_example(sequence: list[bytes]) -> None:
    stats = ServerStats()
    ctx = server_ctx(SERVER)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_hbone(listeners, lambda: ctx, echo, handshake_timeout=2,
                                                                 stats=stats, task_status=task_status))
            tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), client_ctx(CLIENT),
                                 server_hostname=None)
            await tls.do_handshake()
            try:
                await tls.send_all(PREFACE + frame(0x4, 0, 0, b"") + b"".join(sequence))
                with trio.move_on_after(0.05):
                    while await tls.receive_some(65536):
                        pass
            except trio.BrokenResourceError:
                pass   # the server closed the connection on a bad frame: fine
            await trio.aclose_forcefully(tls)
            # The server let go of the connection and still serves another client.
            while stats.connections_active:
                await trio.sleep(0.01)
            async with HboneClientPool(lambda src: client_ctx(CLIENT)) as pool:
                s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
                await s.send_all(b"still serving")
                assert await s.receive_some() == b"still serving"
                await s.aclose()
            nursery.cancel_scope.cancel()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames, max_size=30))
def test_server_survives_any_frame_sequence(sequence):
    trio.run(one_example, sequence)
