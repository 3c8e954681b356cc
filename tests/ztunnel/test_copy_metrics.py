import socket
import struct

import trio

from meshcore import sockio
from tcp_helpers import read_all, tcp_pair
from ztunnel.copy import relay_sockets
from meshcore.telemetry import ConnLabels, log_connection
from ztunnel.metrics import Metrics


async def test_relay_both_ways_with_half_close():
    # client <-> [a | relay | b] <-> server, all real TCP
    client, a = tcp_pair()
    b, server = tcp_pair()
    payload = bytes(range(256)) * 4096  # 1 MiB
    result = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            async def run_relay():
                result["t"] = await relay_sockets(a, b)

            async def send():
                await sockio.send_all(client, payload)
                client.shutdown(socket.SHUT_WR)

            n.start_soon(run_relay)
            n.start_soon(send)
            assert await read_all(server) == payload      # EOF arrived after the bytes
            await sockio.send_all(server, b"reply")
            server.shutdown(socket.SHUT_WR)
            assert await read_all(client) == b"reply"
    t = result["t"]
    assert (t.sent, t.received, t.error) == (len(payload), 5, None)
    for s in (client, a, b, server):
        s.close()


async def test_relay_stops_when_one_side_resets():
    client, a = tcp_pair()
    b, server = tcp_pair()
    out = {}
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            async def run():
                out["t"] = await relay_sockets(a, b)

            n.start_soon(run)
            await sockio.send_all(client, b"x")
            while True:
                try:
                    assert server.recv(10) == b"x"
                    break
                except BlockingIOError:
                    await sockio.wait_readable(server)
            # the upstream goes away with a RST, while the client still has its side open
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()
            await sockio.send_all(client, b"more")
    assert out["t"].error and "reset" in out["t"].error
    for s in (client, a, b):
        s.close()


def test_metrics_names_and_labels():
    m = Metrics()
    labels = ConnLabels(reporter="destination", source_principal="spiffe://cluster.local/ns/a/sa/b",
                        connection_security_policy="mutual_tls")
    m.connection_opened(labels)
    m.connection_closed(labels, request_bytes=10, response_bytes=20)
    text = m.render().decode()
    assert 'istio_tcp_connections_opened_total{' in text
    assert m.value("istio_tcp_received_bytes_total", reporter="destination") == 10
    assert m.value("istio_tcp_sent_bytes_total", source_principal="spiffe://cluster.local/ns/a/sa/b") == 20
    assert m.value("istio_tcp_connections_closed_total", connection_security_policy="mutual_tls") == 1


def test_access_log_line(caplog):
    import logging
    with caplog.at_level(logging.INFO, "trellis.access"):
        e = log_connection(direction="outbound", src="1.1.1.1:5", dst="2.2.2.2:80", labels=ConnLabels("source"),
                           sent=1, received=2, started=0.0, outcome="error", error="boom")
    assert e["error"] == "boom" and '"outcome": "error"' in caplog.text


def test_hbone_refusals_become_metrics():
    from ztunnel.metrics import Metrics
    m = Metrics()
    m.hbone_event("limit_exceeded:premature_resets", "10.0.0.1:4000 (spiffe://td/ns/a/sa/b)")
    m.hbone_event("tunnels_reset_early", "10.0.0.1:4000")
    m.hbone_event("tunnels_accepted", "10.0.0.1:4000")   # not a refusal: no metric
    assert m.value("trellis_hbone_limit_refusals_total", limit="premature_resets") == 1
    assert m.value("trellis_hbone_tunnels_reset_early_total") == 1
