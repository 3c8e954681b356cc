import trio
import trio.testing

from ztunnel.copy import copy_bidirectional
from ztunnel.metrics import ConnLabels, Metrics, log_connection


async def test_copy_both_ways_with_half_close():
    # real TCP sockets on loopback: client <-> [a | copy | b] <-> server
    async def pair():
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        await listener.aclose()
        return client, server

    client, a = await pair()
    b, server = await pair()
    payload = bytes(range(256)) * 4096  # 1 MiB
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            result = {}

            async def run_copy():
                result["t"] = await copy_bidirectional(a, b)

            async def send():
                await client.send_all(payload)
                await client.send_eof()

            n.start_soon(run_copy)
            n.start_soon(send)
            got = bytearray()
            while chunk := await server.receive_some(65536):
                got += chunk
            assert got == payload
            await server.send_all(b"reply")
            await server.send_eof()
            back = bytearray()
            while chunk := await client.receive_some(65536):
                back += chunk
            assert back == b"reply"
    assert result["t"].sent == len(payload) and result["t"].received == 5 and result["t"].error is None
    for s in (client, a, b, server):
        await s.aclose()


async def test_copy_stops_when_one_side_breaks():
    a_near, a_far = trio.testing.memory_stream_pair()
    b_near, b_far = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            out = {}

            async def run():
                out["t"] = await copy_bidirectional(a_near, b_near)

            n.start_soon(run)
            await a_far.send_all(b"x")
            assert await b_far.receive_some() == b"x"
            await b_far.aclose()  # the upstream goes away
            await a_far.send_all(b"more")
    assert out["t"].error


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
    with caplog.at_level(logging.INFO, "trellis.ztunnel.access"):
        e = log_connection(direction="outbound", src="1.1.1.1:5", dst="2.2.2.2:80", labels=ConnLabels("source"),
                           sent=1, received=2, started=0.0, outcome="error", error="boom")
    assert e["error"] == "boom" and '"outcome": "error"' in caplog.text
