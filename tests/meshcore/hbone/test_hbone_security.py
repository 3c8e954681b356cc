"""Bad peers cost one log line each and never the server; the client explains its failures."""
from __future__ import annotations

import logging
import socket
import ssl

import h2.config
import h2.connection
import pytest
import trio

from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.errors import (HboneConnectionLost, HboneConnectRefused, HboneConnectTimeout,
                                   HboneIdentityMismatch, HboneTlsError, HboneTunnelRefused)
from meshcore.identity import CertBundle, peer_uri_san
from meshcore.tls import client_context

from .certs import client_ctx
from .conftest import CLIENT_ID, SERVER_ID, echo, start_server


async def assert_still_serves(port, client_bundle):
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with trio.fail_after(10):
            s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
            await s.send_all(b"still here")
            assert await s.receive_some() == b"still here"
            await s.aclose()


async def wait_for(pred, what: str):
    with trio.fail_after(10):
        while not pred():
            await trio.sleep(0.02)


async def test_foreign_ca_client_rejected_and_server_keeps_serving(nursery, caplog, ca, foreign_ca,
                                                                   client_bundle, server_bundle):
    caplog.set_level(logging.WARNING, "meshcore.hbone")
    (port,), stats = await start_server(nursery, echo, server_bundle)
    impostor = foreign_ca.issue(CLIENT_ID)
    # It trusts the mesh root, so only the server's check can stop it.
    impostor = CertBundle(impostor.key_pem, impostor.chain_pem, (ca.root_pem,))
    async with HboneClientPool(lambda src: client_ctx(impostor)) as pool:
        # TLS 1.3: the client may only learn of the rejection after its handshake completed.
        with pytest.raises((HboneConnectionLost, HboneTlsError), match="certificate"):
            with trio.fail_after(10):
                s = await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
                await s.receive_some()
    await wait_for(lambda: stats.handshake_failures == 1, "handshake failure counted")
    assert stats.tunnels_requested == 0
    assert any("not signed by the mesh CA" in r.getMessage() and "127.0.0.1:" in r.getMessage()
               for r in caplog.records)
    await assert_still_serves(port, client_bundle)


async def test_client_rejects_server_from_foreign_ca(nursery, foreign_ca, client_bundle):
    rogue = foreign_ca.issue(SERVER_ID)
    (port,), _ = await start_server(nursery, echo, rogue)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with pytest.raises(HboneTlsError, match=rf"peer 127.0.0.1:{port} presented a certificate not signed by the mesh CA"):
            await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        assert pool.connections_failed == 1 and not pool.connections()


async def test_identity_mismatch_raises_before_any_tunnel_is_requested(nursery, client_bundle, server_bundle):
    (port,), stats = await start_server(nursery, echo, server_bundle)
    want = "spiffe://cluster.local/ns/tt-hbone/sa/somebody-else"
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with pytest.raises(HboneIdentityMismatch, match=f"expected {want} but peer 127.0.0.1:{port} presented {SERVER_ID}"):
            await pool.connect(("127.0.0.1", port), "10.0.0.1:80", want, CLIENT_ID)
    await trio.sleep(0.1)
    assert stats.tunnels_requested == 0


@pytest.mark.parametrize("status", [401, 403, 503, 504])
async def test_refused_tunnel_raises_with_status_and_advice(nursery, client_bundle, server_bundle, status):
    async def deny(req):
        assert req.peer_identity == CLIENT_ID and req.authority == ("10.0.0.9", 443)
        assert ("traceparent", "00-1-2-01") in req.headers
        await req.refuse(status, "rule deny-all")

    (port,), stats = await start_server(nursery, deny, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with pytest.raises(HboneTunnelRefused) as e:
            await pool.connect(("127.0.0.1", port), "10.0.0.9:443", SERVER_ID, CLIENT_ID,
                               headers=[("traceparent", "00-1-2-01")])
        assert e.value.status == status and e.value.reason == "rule deny-all"
        assert f"HTTP {status}" in str(e.value)
        # The connection survives a refused tunnel.
        assert len(pool.connections()) == 1
    assert stats.tunnels_refused == 1


async def test_crashing_handler_answers_503_and_server_stays_up(nursery, client_bundle, server_bundle):
    calls = []

    async def flaky(req):
        calls.append(req)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        await echo(req)

    (port,), stats = await start_server(nursery, flaky, server_bundle)
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with pytest.raises(HboneTunnelRefused) as e:
            await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        assert e.value.status == 503
    assert stats.handler_errors == 1
    await assert_still_serves(port, client_bundle)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connect_refused_has_advice(client_bundle):
    port = free_port()
    async with HboneClientPool(lambda src: client_ctx(client_bundle)) as pool:
        with pytest.raises(HboneConnectRefused, match=rf"connection to 127.0.0.1:{port} refused: is ztunnel running"):
            await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)


async def test_silent_peer_times_out_with_advice(nursery, client_bundle):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held = []

    async def accept_and_hold():
        async with listeners[0]:
            while True:
                held.append(await listeners[0].accept())

    nursery.start_soon(accept_and_hold)
    async with HboneClientPool(lambda src: client_ctx(client_bundle), connect_timeout=0.3) as pool:
        with pytest.raises(HboneConnectTimeout, match=f"127.0.0.1:{port} timed out"):
            await pool.connect(("127.0.0.1", port), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
    for s in held:
        await s.aclose()


async def tls_to(port, bundle=None, roots=None, alpn=("h2",)):
    if bundle is not None:
        ctx = client_context(bundle, alpn=list(alpn))
    else:   # a TLS client with no certificate of its own
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=roots.decode())
        ctx.set_alpn_protocols(list(alpn))
    tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx)
    await tls.do_handshake()
    return tls


async def drain_until_closed(stream) -> None:
    with trio.fail_after(10):
        try:
            for _ in range(1000):
                if not await stream.receive_some(65536):
                    return
        except trio.BrokenResourceError:
            return
    raise AssertionError("server kept the connection open")


def h2_preface_and(headers_value_size: int = 0, garbage_frame: bytes = b"") -> bytes:
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h.initiate_connection()
    if headers_value_size:
        h.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80"),
                           ("x-big", "a" * headers_value_size)])
    return h.data_to_send() + garbage_frame


@pytest.mark.parametrize("case", ["garbage", "http1", "no-cert", "bad-frame", "huge-headers", "no-alpn"])
async def test_bad_peers_are_closed_logged_and_server_keeps_serving(nursery, caplog, ca, client_bundle,
                                                                    server_bundle, case):
    caplog.set_level(logging.DEBUG, "meshcore.hbone")
    (port,), stats = await start_server(nursery, echo, server_bundle)
    if case in ("garbage", "http1"):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"\x00\xffgarbage\r\n" * 50 if case == "garbage" else
                         b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
        await drain_until_closed(s)
        await s.aclose()
        await wait_for(lambda: stats.handshake_failures == 1, "handshake failure")
        expect = "did not speak TLS 1.3"
    elif case in ("no-cert", "no-alpn"):
        try:
            tls = (await tls_to(port, roots=ca.root_pem) if case == "no-cert"
                   else await tls_to(port, bundle=client_bundle, alpn=("http/1.1",)))
            await tls.send_all(h2_preface_and())
            await drain_until_closed(tls)
        except trio.BrokenResourceError:
            pass   # TLS 1.3 may report the server's alert on the first read or write
        await wait_for(lambda: stats.handshake_failures == 1, "handshake failure")
        expect = "sent no client certificate" if case == "no-cert" else "ALPN h2"
    else:
        tls = await tls_to(port, bundle=client_bundle)
        # A DATA frame on stream 0 is a connection error; a header list beyond our limit too.
        payload = (h2_preface_and(garbage_frame=b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd") if case == "bad-frame"
                   else h2_preface_and(headers_value_size=64 * 1024))
        await tls.send_all(payload)
        await drain_until_closed(tls)
        if case == "bad-frame":
            await wait_for(lambda: stats.protocol_errors == 1, "protocol error")
            expect = "protocol error from 127.0.0.1:"
        else:   # refused on the frame header, before h2 buffers the block
            await wait_for(lambda: stats.limits_exceeded == {"header_block": 1}, "header block limit")
            expect = "limit header_block exceeded by 127.0.0.1:"
    assert any(expect in r.getMessage() and "127.0.0.1:" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    await assert_still_serves(port, client_bundle)


async def test_renewed_certificate_used_by_new_connections_old_tunnel_keeps_working(nursery, ca, server_bundle):
    seen: list[bytes] = []

    async def record_and_echo(req):
        seen.append(req.peer_certificate)
        await echo(req)

    (p1, p2), _ = await start_server(nursery, record_and_echo, server_bundle, n_listeners=2)
    current = {"bundle": ca.issue(CLIENT_ID)}
    async with HboneClientPool(lambda src: client_ctx(current["bundle"])) as pool:
        old = await pool.connect(("127.0.0.1", p1), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        await old.send_all(b"before")
        assert await old.receive_some() == b"before"
        current["bundle"] = ca.issue(CLIENT_ID)   # renewal: same identity, new key and serial
        new = await pool.connect(("127.0.0.1", p2), "10.0.0.1:80", SERVER_ID, CLIENT_ID)
        await new.send_all(b"new")
        assert await new.receive_some() == b"new"
        await old.send_all(b"after renewal")
        assert await old.receive_some() == b"after renewal"
        await old.aclose()
        await new.aclose()
    assert len(seen) == 2 and seen[0] != seen[1]
    assert {peer_uri_san(d) for d in seen} == {CLIENT_ID}


async def test_stalled_client_is_dropped_after_handshake_timeout(nursery, caplog, client_bundle, server_bundle):
    caplog.set_level(logging.WARNING, "meshcore.hbone")
    (port,), stats = await start_server(nursery, echo, server_bundle)   # handshake_timeout=2
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await drain_until_closed(s)   # we never send a byte; the server must hang up on us
    await s.aclose()
    await wait_for(lambda: stats.handshake_failures == 1, "handshake failure")
    assert any("TLS handshake took longer than" in r.getMessage() for r in caplog.records)
    await assert_still_serves(port, client_bundle)
