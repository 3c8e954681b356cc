"""The client pool: multiplexing, flow control, connection limits and idle close."""
from __future__ import annotations

import os

import pytest
import trio

from meshcore.hbone import codec as c
from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.errors import HboneConnectRefused, HboneConnectTimeout

from meshcore.hbone.server import serve_hbone

from .certs import client_ctx, server_ctx
from .conftest import CLIENT_ID, SERVER_ID, echo, start_server

MiB = 1024 * 1024


async def read_exactly(stream, n: int) -> bytes:
    got = bytearray()
    for _ in range(n):   # each round returns >= 1 byte, so n rounds always suffice
        if len(got) >= n:
            break
        chunk = await stream.receive_some(256 * 1024)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def test_fifty_tunnels_share_one_connection_and_echo_1mib(nursery, client_bundle, server_bundle):
    (port,), stats = await start_server(nursery, echo, server_bundle)
    results: dict[int, bool] = {}
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        async def one(i: int) -> None:
            payload = os.urandom(MiB)
            s = await pool.connect(("127.0.0.1", port), f"10.244.2.{i + 1}:8080", SERVER_ID, CLIENT_ID)
            async with trio.open_nursery() as n:
                async def send():
                    await s.send_all(payload)
                    await s.send_eof()
                n.start_soon(send)
                got = await read_exactly(s, MiB)
            assert await s.receive_some() == b""
            await s.aclose()
            results[i] = got == payload

        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                for i in range(50):
                    n.start_soon(one, i)
        assert pool.connections_opened == 1
        assert len(pool.connections()) == 1
    assert results == {i: True for i in range(50)}
    assert stats.connections_accepted == 1 and stats.tunnels_accepted == 50


async def test_slow_reader_blocks_sender_at_the_window(nursery, client_bundle, server_bundle):
    accepted: list = []
    may_read = trio.Event()
    received = bytearray()

    async def slow(req):
        stream = await req.accept()
        accepted.append(stream)
        await may_read.wait()
        while data := await stream.receive_some(MiB):
            received.extend(data)
        await stream.send_eof()

    (port,), _ = await start_server(nursery, slow, server_bundle)
    payload = os.urandom(3 * c.STREAM_WINDOW)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        done = trio.Event()

        async def send():
            await s.send_all(payload)
            await s.send_eof()
            done.set()

        nursery.start_soon(send)
        with trio.fail_after(20):
            while s.bytes_sent < c.STREAM_WINDOW:
                await trio.sleep(0.01)
        for _ in range(20):   # give a broken flow control every chance to overrun
            await trio.sleep(0.01)
        assert s.bytes_sent == c.STREAM_WINDOW and not done.is_set()
        server_buffered = sum(map(len, accepted[0]._st.received))
        assert server_buffered <= c.STREAM_WINDOW   # memory on the slow side stays bounded
        may_read.set()
        with trio.fail_after(30):
            await done.wait()
            assert await s.receive_some() == b""
        await s.aclose()
    assert bytes(received) == payload


async def test_peer_stream_limit_opens_a_second_connection(nursery, client_bundle, server_bundle):
    release = trio.Event()

    async def hold(req):
        stream = await req.accept()
        await release.wait()
        await stream.aclose()

    (port,), stats = await start_server(nursery, hold, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        streams = []
        with trio.fail_after(30):
            for i in range(c.MAX_CONCURRENT_STREAMS + 1):
                streams.append(await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID))
        assert pool.connections_opened == 2
        release.set()
        for s in streams:
            await s.aclose()
    assert stats.connections_accepted == 2


async def test_idle_connection_is_closed_and_a_new_one_opened_later(nursery, client_bundle, server_bundle):
    (port,), stats = await start_server(nursery, echo, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle), idle_timeout=0.2) as pool:
        s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        await s.aclose()
        with trio.fail_after(10):
            while pool.connections() or stats.connections_active:
                await trio.sleep(0.05)
        s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        await s.send_all(b"again")
        assert await s.receive_some() == b"again"
        await s.aclose()
        assert pool.connections_opened == 2


async def test_pool_keys_by_destination_identity_and_address(nursery, ca, client_bundle, server_bundle):
    (p1, p2), stats = await start_server(nursery, echo, server_bundle, n_listeners=2)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        a = await pool.connect(("127.0.0.1", p1), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        b = await pool.connect(("127.0.0.1", p2), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        other_src = "spiffe://cluster.local/ns/tt-hbone/sa/other"
        d = await pool.connect(("127.0.0.1", p1), "10.0.0.1:80", SERVER_ID, other_src)
        e = await pool.connect(("127.0.0.1", p1), "10.0.0.2:80", SERVER_ID, CLIENT_ID)
        assert pool.connections_opened == 3   # e shares a's connection
        for s in (a, b, d, e):
            await s.aclose()


async def test_server_gone_breaks_tunnels_and_leaves_the_pool(client_bundle, server_bundle):
    async with trio.open_nursery() as server_nursery:
        (port,), _ = await start_server(server_nursery, echo, server_bundle)
        async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
            s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
            await s.send_all(b"x")
            assert await s.receive_some() == b"x"
            server_nursery.cancel_scope.cancel()   # the destination ztunnel goes away
            with trio.fail_after(10):
                with pytest.raises(trio.BrokenResourceError, match="127.0.0.1"):
                    await s.receive_some()
                while pool.connections():
                    await trio.sleep(0.02)
            with pytest.raises(HboneConnectRefused):
                await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
            await s.aclose()


async def test_source_address_separates_connections(nursery, client_bundle, server_bundle):
    (port,), _ = await start_server(nursery, echo, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        a = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID, source_address="10.244.1.5")
        b = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID, source_address="10.244.1.6")
        a2 = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID, source_address="10.244.1.5")
        assert pool.connections_opened == 2
        for s in (a, b, a2):
            await s.aclose()


async def test_server_drain_lets_open_tunnels_finish(client_bundle, server_bundle):
    drain = trio.Event()
    served = trio.Event()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    ctx = server_ctx(server_bundle)
    async with trio.open_nursery() as nursery:
        async def serve():
            await serve_hbone(listeners, lambda: ctx, echo, drain=drain)
            served.set()
        nursery.start_soon(serve)
        async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
            with trio.fail_after(20):
                s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
                await s.send_all(b"before")
                assert await s.receive_some() == b"before"
                drain.set()
                while not pool.connections()[0].mux.codec.going_away:
                    await trio.sleep(0.02)
                await s.send_all(b"during the drain")   # the open tunnel keeps working
                assert await s.receive_some() == b"during the drain"
                with pytest.raises(HboneConnectRefused):   # but nothing new is accepted
                    await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
                assert not served.is_set()
                await s.send_eof()
                assert await s.receive_some() == b""   # a clean EOF, not a broken connection
                await s.aclose()
                await served.wait()   # serve_hbone returns once the last tunnel is done
                while pool.connections():
                    await trio.sleep(0.02)


async def test_a_tunnel_the_peer_never_answers_times_out_and_the_next_one_opens(nursery, client_bundle,
                                                                                server_bundle):
    hold = trio.Event()
    answered: list[int] = []

    async def slow_then_echo(req):
        if not answered:           # the first tunnel: no answer until the test is done
            answered.append(0)
            await hold.wait()
            return
        answered.append(1)
        await echo(req)

    (port,), _ = await start_server(nursery, slow_then_echo, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle), open_timeout=0.2) as pool:
        with trio.fail_after(30):   # a hang guard: the pool's deadline watch must end the wait
            with pytest.raises(HboneConnectTimeout, match="did not answer the tunnel request for 10.244.2.1:8080 "
                                                          "within 0.2s"):
                await pool.connect(("127.0.0.1", port), "10.244.2.1:8080", SERVER_ID, CLIENT_ID)
            # the deadline was the pool's, not the connection's: the next tunnel on it opens
            s = await pool.connect(("127.0.0.1", port), "10.244.2.2:8080", SERVER_ID, CLIENT_ID)
            await s.send_all(b"ping")
            assert await s.receive_some() == b"ping"
            await s.aclose()
        assert pool.connections_opened == 1 and answered == [0, 1]
    hold.set()
