"""The config reaches the waypoint and the callers' ztunnels at different moments
(waypoint/app.py, Config.config_grace): a Service that stops using the waypoint is still
served for the grace, and a tunnel for a Service the waypoint does not serve yet waits that
long for the snapshot that says it does. Real waypoint, TLS, HBONE, backend and curl."""
from __future__ import annotations

import pytest
import trio

from meshcore.hbone import HboneTunnelRefused
from wp_process import (NAMESPACE, SLEEP_ID, WAYPOINT_ID, acurl, backend, grpc_server, mesh, resources, service,
                        workload)

V1 = "127.0.0.21"
GRACE = 1.0


def config(port: int, bound: bool, port_name: str = "http") -> list:
    return resources(NAMESPACE + service("web", "10.96.0.10", port, "v1", waypoint=bound, port_name=port_name)
                     + workload("v1", V1, "v1"))


@pytest.fixture
async def v1():
    srv = backend(V1, "v1")
    yield srv.server_address[1]
    srv.shutdown()


async def refused(m) -> str:
    with pytest.raises(HboneTunnelRefused) as err:
        await m.pool.connect(("127.0.0.1", m.hbone_port), "10.96.0.10:80", WAYPOINT_ID, SLEEP_ID)
    return str(err.value)


async def test_a_service_that_left_the_waypoint_is_served_for_the_grace_then_refused(tmp_path, v1):
    async with mesh(tmp_path) as m:
        await m.start("", [V1], config_grace=GRACE)
        m.waypoint.on_update(config(v1, True), 1)
        port = await m.bridge("10.96.0.10:80")
        assert (await acurl(f"http://127.0.0.1:{port}/")).stdout == "v1\n"
        m.waypoint.on_update(config(v1, False), 2)   # its use-waypoint label removed
        # the caller's ztunnel has not heard yet: its new connections are still served
        assert (await acurl(f"http://127.0.0.1:{port}/")).stdout == "v1\n"
        await trio.sleep(GRACE + 0.2)
        why = await refused(m)
        assert "404" in why and "does not use waypoint" in why


async def test_a_tunnel_for_a_service_not_yet_bound_waits_for_the_snapshot_that_binds_it(tmp_path, v1):
    async with mesh(tmp_path) as m:
        await m.start("", [V1], config_grace=GRACE)
        m.waypoint.on_update(config(v1, False), 1)
        port = await m.bridge("10.96.0.10:80")
        got = []
        async with trio.open_nursery() as n:
            async def call():
                got.append((await acurl(f"http://127.0.0.1:{port}/")).stdout)
            n.start_soon(call)
            await trio.sleep(0.3)   # the tunnel is waiting at the waypoint
            assert got == []
            m.waypoint.on_update(config(v1, True), 2)   # the label reaches the waypoint last
        assert got == ["v1\n"]
        # a Service that stays unbound is refused once the grace is over
        m.waypoint.on_update(config(v1, False), 3)
        with trio.fail_after(GRACE + 5):   # a bound, not a speed claim
            await trio.sleep(GRACE + 0.2)   # past the grace of the release just made
            why = await refused(m)
        assert "does not use waypoint" in why


async def test_an_http2_connection_accepted_while_draining_is_served_then_told_to_go(tmp_path):
    """During the drain grace: our SETTINGS first (RFC 9113 3.4), the first request (a gRPC
    call) answered, then the GOAWAY notice (a client reconnecting on GOAWAY is served, not
    sent round again to a waypoint that only says go away)."""
    import grpc
    import h2.config
    import h2.connection
    import h2.events
    server, port = grpc_server(V1, "test.Echo", "Say", grpc.unary_unary_rpc_method_handler(lambda r, _c: b"hello " + r))
    try:
        async with mesh(tmp_path) as m:
            await m.start("", [V1], config_grace=GRACE)
            m.waypoint.on_update(config(port, True, port_name="grpc"), 1)   # a gRPC backend: h2c upstream
            local = await m.bridge("10.96.0.10:80")
            m.waypoint.draining.set()   # what SIGTERM does
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                          header_encoding="utf-8"))
            client.initiate_connection()
            client.send_headers(1, [(":method", "POST"), (":path", "/test.Echo/Say"), (":scheme", "http"),
                                    (":authority", "web"), ("content-type", "application/grpc"), ("te", "trailers")])
            client.send_data(1, b"\x00" + (2).to_bytes(4, "big") + b"hi", end_stream=True)
            got: list = []
            stream = await trio.open_tcp_stream("127.0.0.1", local)
            async with stream:
                await stream.send_all(client.data_to_send())
                with trio.fail_after(10):   # a bound, not a speed claim
                    while not any(isinstance(e, h2.events.ConnectionTerminated) for e in got):
                        data = await stream.receive_some(65536)
                        assert data, f"closed before GOAWAY; events: {got}"
                        got += client.receive_data(data)
                        await stream.send_all(client.data_to_send())
    finally:
        server.stop(0)
    kinds = [type(e) for e in got]
    assert kinds[0] is h2.events.RemoteSettingsChanged, kinds
    assert kinds.index(h2.events.StreamEnded) < kinds.index(h2.events.ConnectionTerminated), kinds
    body = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    assert body.endswith(b"hello hi"), (body, kinds)
