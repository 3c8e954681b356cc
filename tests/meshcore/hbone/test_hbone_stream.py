"""HboneStream over a real TLS 1.3 + h2 connection on loopback."""
from __future__ import annotations

import trio
import trio.testing

from meshcore.hbone import codec as c
from meshcore.hbone.client import HboneClientPool

from .certs import client_ctx
from .conftest import CLIENT_ID, SERVER_ID, echo, start_server


async def test_echo_roundtrip_and_half_close(nursery, client_bundle, server_bundle):
    (port,), stats = await start_server(nursery, echo, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        s = await pool.connect(("127.0.0.1", port), "10.244.2.5:8080", SERVER_ID, CLIENT_ID)
        await s.send_all(b"hello hbone")
        await s.send_eof()
        got = b""
        with trio.fail_after(10):
            while chunk := await s.receive_some():
                got += chunk
        assert got == b"hello hbone"
        await s.aclose()
    assert stats.tunnels_accepted == 1 and stats.handshake_failures == 0


async def test_check_half_closeable_stream(nursery, client_bundle, server_bundle):
    send_ch, recv_ch = trio.open_memory_channel(10)

    async def hand_over(req):
        stream = await req.accept()
        await send_ch.send(stream)
        await trio.sleep_forever()   # the checker owns the stream now

    (port,), _ = await start_server(nursery, hand_over, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        async def maker():
            client = await pool.connect(("127.0.0.1", port), "127.0.0.1:9", SERVER_ID, CLIENT_ID)
            with trio.fail_after(10):
                server = await recv_ch.receive()
            return client, server

        async def clogged_maker():
            # Fill the stream window both ways with nobody reading: the next send blocks.
            client, server = await maker()
            async with trio.open_nursery() as n:
                n.start_soon(client.send_all, b"c" * c.STREAM_WINDOW)
                n.start_soon(server.send_all, b"s" * c.STREAM_WINDOW)
            return client, server

        with trio.fail_after(120):
            await trio.testing.check_half_closeable_stream(maker, clogged_maker)
        assert pool.connections_opened == 1


async def test_tunnels_sending_in_one_scheduler_round_share_one_tls_write(nursery, client_bundle, server_bundle):
    """DATA from many tunnels woken together leaves in one write (multiplexing pays),
    and every tunnel still gets its own bytes back."""
    (port,), _ = await start_server(nursery, echo, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        streams = [await pool.connect(("127.0.0.1", port), "10.244.2.5:8080", SERVER_ID, CLIENT_ID)
                   for _ in range(8)]
        (conn,) = pool.connections()
        tls = conn.mux.transport
        writes = []
        real_send = tls.send_nowait

        def counting_send(data):      # observe the real TLS socket's writes
            writes.append(len(data))
            return real_send(data)

        tls.send_nowait = counting_send
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                for i, s in enumerate(streams):
                    n.start_soon(s.send_all, b"request %d" % i)
            await trio.testing.wait_all_tasks_blocked()
            assert len(writes) == 1, writes   # eight tunnels' frames, one TLS write
            for i, s in enumerate(streams):
                assert await s.receive_some() == b"request %d" % i
        for s in streams:
            await s.aclose()



async def test_bytes_waiting_unread_survive_other_connections_reads(nursery, client_bundle, server_bundle):
    """Every TLS socket decrypts into one shared buffer (TlsSocket.receive_view): what a
    tunnel received and nobody read yet must be its own copy, not a view that the next
    read on another HBONE connection overwrites."""
    (port,), _ = await start_server(nursery, echo, server_bundle)
    a_payload, b_payload = bytes(range(256)) * 64, b"\xee" * (64 * 1024)
    # Two pools: two HBONE connections, each with its own reader on the same buffer.
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pa, \
            HboneClientPool(lambda src: client_ctx(client_bundle)) as pb:
        a = await pa.connect(("127.0.0.1", port), "10.244.2.5:8080", SERVER_ID, CLIENT_ID)
        b = await pb.connect(("127.0.0.1", port), "10.244.2.5:8080", SERVER_ID, CLIENT_ID)
        await a.send_all(a_payload)
        await a.send_eof()
        with trio.fail_after(10):   # a's echo arrives and waits, unread, in its stream
            while a._st.taken + sum(map(len, a._st.received)) < len(a_payload) and not a._st.recv_ended:
                await trio.sleep(0.01)
        for _ in range(4):          # b's reader decrypts into the same buffer meanwhile
            await b.send_all(b_payload)
            got = b""
            with trio.fail_after(10):
                while len(got) < len(b_payload):
                    got += await b.receive_some()
            assert got == b_payload
        got = b""
        with trio.fail_after(10):
            while chunk := await a.receive_some():
                got += chunk
        assert got == a_payload
        await a.aclose()
        await b.aclose()
