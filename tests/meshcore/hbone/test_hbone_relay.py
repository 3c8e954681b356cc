"""HboneStream.relay: a tunnel <-> a real TCP socket in one task, over real TLS + h2."""
from __future__ import annotations

import socket
import struct
from contextlib import asynccontextmanager

import pytest
import trio

from meshcore import sockio
from meshcore.hbone import h2private
from meshcore.hbone.client import HboneClientPool
from tcp_helpers import read_all, tcp_pair

from .certs import client_ctx
from .conftest import CLIENT_ID, SERVER_ID, start_server


SMALL_BUFFERS = 64 * 1024   # a few MiB fill these sockets


async def relay_then_close(out: list, tunnel, sock) -> None:
    """Run the relay to its end, note what it raised (None when it ended cleanly), then
    close the tunnel as ztunnel does (so the peer's relay ends too)."""
    try:
        await tunnel.relay(sock)
        out.append(None)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        out.append(e)
    await tunnel.aclose()


def reset(sock: socket.socket) -> None:
    """Close with RST, as an app that aborts its connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def server_saw_the_reset(srv) -> None:
    with trio.fail_after(5):
        while not srv.results:
            await trio.sleep(0.01)
    assert isinstance(srv.results[0], trio.BrokenResourceError)   # the tunnel's reset reached it


def all_tasks() -> int:
    def count(task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)
    return count(trio.lowlevel.current_root_task())


class Relayed:
    """Server side: each accepted tunnel is relayed to a fresh TCP connection whose far
    end (`backends`) the test drives, like an app behind the inbound ztunnel."""

    def __init__(self) -> None:
        self.backends: list[socket.socket] = []
        self.results: list[BaseException | None] = []
        self.arrived = trio.Event()

    async def handler(self, req) -> None:
        near, far = tcp_pair(SMALL_BUFFERS)
        self.backends.append(far)
        stream = await req.accept()
        self.arrived.set()
        try:
            await stream.relay(near)
            self.results.append(None)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.results.append(e)
        finally:
            await trio.aclose_forcefully(stream)
            sockio.close(near)


async def test_relay_moves_megabytes_both_ways_through_full_sockets(nursery, client_bundle, server_bundle):
    """Nobody reads until 4 MiB were sent each way, so both sides' sockets fill and the
    backlog path runs; every byte arrives in order and each EOF after its bytes."""
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    up = bytes(range(256)) * 16384          # 4 MiB toward the app
    down = bytes(range(255, -1, -1)) * 16384
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        tunnel = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
        user, near = tcp_pair(SMALL_BUFFERS)
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(tunnel.relay, near)
                await srv.arrived.wait()
                app = srv.backends[0]

                async def send(sock, data):
                    await sockio.send_all(sock, data)
                    sock.shutdown(socket.SHUT_WR)

                n.start_soon(send, user, up)
                n.start_soon(send, app, down)
                await trio.sleep(0.5)   # both directions stall on full buffers
                got = {}

                async def collect(name, sock):
                    got[name] = await read_all(sock)

                n.start_soon(collect, "app", app)
                n.start_soon(collect, "user", user)
        assert got["app"] == up and got["user"] == down
        assert tunnel.bytes_sent == len(up) and tunnel.bytes_received == len(down)
        assert tunnel._mux.relays.backlog_tasks >= 1   # the client side's socket did fill
        await tunnel.aclose()
    with trio.fail_after(5):
        while not srv.results:
            await trio.sleep(0.01)
    assert srv.results == [None]


async def test_an_idle_relayed_tunnel_costs_one_task_per_side(nursery, client_bundle, server_bundle):
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        warm = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
        await trio.sleep(0.2)
        before = all_tasks()
        k = 20
        socks = []
        async with trio.open_nursery() as n:
            for _ in range(k):
                t = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
                user, near = tcp_pair(SMALL_BUFFERS)
                socks += [user, near]
                n.start_soon(t.relay, near)
            with trio.fail_after(10):
                while len(srv.backends) < k + 1:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)
            # one relay task here and one handler task in the server per tunnel
            assert all_tasks() - before == 2 * k
            n.cancel_scope.cancel()
        await warm.aclose()
        for s in socks:
            s.close()


@pytest.mark.parametrize("how", ["reset", "connection_lost"])
async def test_a_relay_waiting_on_its_socket_ends_when_the_tunnel_goes(nursery, client_bundle, server_bundle, how):
    """The relay's one task waits for its socket; a reset or a dead connection must still
    end it at once, with the reason."""
    gone = trio.Event()
    server_scope = trio.CancelScope()

    async def handler(req):
        stream = await req.accept()
        await gone.wait()
        if how == "reset":
            await stream.aclose()            # neither side ended: END_STREAM + RST_STREAM
        else:   # the TLS connection dies under the tunnel: RST, no HTTP/2 goodbye
            req._mux.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            req._mux.transport.close()
            await trio.sleep_forever()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with server_scope:
            async with trio.open_nursery() as n:
                ports, _ = await start_server(n, handler, server_bundle)
                task_status.started(ports[0])
                await trio.sleep_forever()

    port = await nursery.start(serve)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        tunnel = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
        user, near = tcp_pair(SMALL_BUFFERS)
        out = []
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(relay_then_close, out, tunnel, near)
                await trio.sleep(0.2)
                gone.set()
        info = out[0]
        assert isinstance(info, trio.BrokenResourceError), repr(info)
        assert ("reset by the peer" in str(info)) == (how == "reset")
        user.close()
        near.close()


async def test_a_relay_ends_with_the_apps_reset_while_data_arrives(nursery, client_bundle, server_bundle):
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        tunnel = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
        user, near = tcp_pair(SMALL_BUFFERS)
        out = []
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                async def keep_sending():
                    try:
                        for _ in range(200):
                            await sockio.send_all(srv.backends[0], b"x" * 65536)
                    except OSError:
                        pass   # the server's relay ended and closed the app's connection

                n.start_soon(relay_then_close, out, tunnel, near)
                await srv.arrived.wait()
                n.start_soon(keep_sending)
                await trio.sleep(0.1)
                # the user resets its connection while the app keeps sending
                reset(user)
        near.close()
    assert isinstance(out[0], OSError), repr(out[0])
    await server_saw_the_reset(srv)


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        await sockio.wait_readable(sock)
        got += sock.recv(65536)
    return got


async def round_trip(user: socket.socket, app: socket.socket, request: bytes, response: bytes) -> None:
    for src, dst, data in ((user, app, request), (app, user, response)):
        await sockio.send_all(src, data)
        assert await recv_exactly(dst, len(data)) == data


@asynccontextmanager
async def relayed(pool, port: int, srv: Relayed, i: int = 0):
    """Open tunnel number `i` to the Relayed server and relay it to a fresh TCP pair, under
    a deadline; yields (tunnel, user: the client app's end, app: the server app's end,
    out: what the relay raised once it ended)."""
    tunnel = await pool.connect(("127.0.0.1", port), "127.0.0.1:80", SERVER_ID, CLIENT_ID)
    user, near = tcp_pair()
    out: list = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(relay_then_close, out, tunnel, near)
                while len(srv.backends) <= i:
                    await trio.sleep(0.005)
                yield tunnel, user, srv.backends[i], out
    finally:
        user.close()
        near.close()


async def test_requests_on_an_idle_relay_are_read_by_the_connections_poller(nursery, client_bundle, server_bundle):
    """Between requests the relay task parks; the connection's poller reads each request,
    frames it and writes it, and the relay task is not needed until EOF."""
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        async with relayed(pool, port, srv) as (tunnel, user, app, out):
            for i in range(100):
                await round_trip(user, app, b"GET /%d HTTP/1.1\r\n\r\n" % i, b"HTTP/1.1 200 OK\r\n\r\n%d" % i)
            # the first request may be read by the relay task itself, as it starts
            assert tunnel._mux.relays.polled_reads >= 99
            assert tunnel.bytes_sent == sum(len(b"GET /%d HTTP/1.1\r\n\r\n" % i) for i in range(100))
            user.shutdown(socket.SHUT_WR)
            assert await read_all(app) == b""   # EOF went through as END_STREAM
            app.shutdown(socket.SHUT_WR)
            assert await read_all(user) == b""
        assert out == [None]


async def test_bytes_and_fin_arriving_together_on_an_idle_relay_end_the_direction(
        nursery, client_bundle, server_bundle):
    """The last bytes and the FIN raise one edge; reading the bytes consumes it, so the
    relay must not go back to waiting for another edge that never comes."""
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        for i in range(20):
            async with relayed(pool, port, srv, i) as (tunnel, user, app, out):
                await round_trip(user, app, b"hello", b"world")   # both relays now idle
                await trio.sleep(0.01)
                user.send(b"last words" * (i + 1))   # no yield between: one edge for both
                user.shutdown(socket.SHUT_WR)
                assert await read_all(app) == b"last words" * (i + 1)
                app.send(b"bye")
                app.shutdown(socket.SHUT_WR)
                assert await read_all(user) == b"bye"
            assert out == [None]


async def test_bytes_and_fin_on_an_idle_relay_leave_with_end_stream_in_one_write(
        nursery, client_bundle, server_bundle):
    """The poller takes the EOF behind an idle relay's last bytes itself: END_STREAM is framed
    with them and leaves in the same TLS write (the peer gets both in one read)."""
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        async with relayed(pool, port, srv) as (tunnel, user, app, out):
            await round_trip(user, app, b"hello", b"world")
            await trio.sleep(0.05)   # both relays parked: the poller watches the sockets
            tls, writes = tunnel._mux.transport, []
            real_send = tls.send_nowait

            def spy(data):
                writes.append(b"".join(bytes(c) for c in (data if type(data) is list else [data])))
                return real_send(data)

            tls.send_nowait = spy
            user.send(b"last words")
            user.shutdown(socket.SHUT_WR)
            assert await read_all(app) == b"last words"
            end = h2private.HEADER.pack(0, 0, h2private.DATA, h2private.END_STREAM, tunnel.stream_id)
            assert end in next(w for w in writes if b"last words" in w), writes
            app.send(b"bye")
            app.shutdown(socket.SHUT_WR)
            assert await read_all(user) == b"bye"
        assert out == [None]


async def test_an_app_reset_on_an_idle_relay_ends_it_with_the_error(nursery, client_bundle, server_bundle):
    srv = Relayed()
    (port,), _ = await start_server(nursery, srv.handler, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        async with relayed(pool, port, srv) as (tunnel, user, app, out):
            await round_trip(user, app, b"ping", b"pong")
            await trio.sleep(0.05)   # the relay task parked; only the poller watches its socket
            reset(user)
    assert isinstance(out[0], ConnectionResetError), repr(out[0])
    await server_saw_the_reset(srv)
