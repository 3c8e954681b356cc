"""Protocol detection from first bytes, fed in every split."""
import pytest

from waypoint.http.detect import H2_PREFACE, HTTP1, HTTP2, L4, detect


@pytest.mark.parametrize("data,kind", [
    (H2_PREFACE, HTTP2), (H2_PREFACE + b"\x00\x00\x00\x04", HTTP2),
    (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", HTTP1), (b"OPTIONS * HTTP/1.0\n", HTTP1),
    (b"PATCH /a?b=%20 HTTP/1.1\r\n", HTTP1),
    (b"\x16\x03\x01\x02\x00\x01", L4), (b"SSH-2.0-OpenSSH_9.2\r\n", L4), (b"PRI * HTTP/2.0\r\n\r\nXX", L4),
    (b"GET / HTTP/2.0\r\n", L4), (b"get / http/1.1\r\n", L4), (b"GET  / HTTP/1.1\r\n", L4),
    (b"\x00\x00\x00\x01", L4), (b"GET / HTTP/1.1\rX", L4),
])
def test_complete_inputs(data, kind):
    assert detect(data) == kind


@pytest.mark.parametrize("data", [H2_PREFACE, b"GET /index.html HTTP/1.1\r\n"])
def test_every_prefix_waits_then_decides(data):
    for i in range(1, len(data)):
        assert detect(data[:i]) is None, data[:i]
        assert detect(data[:i], final=True) == L4      # the sniffing timeout: forward as L4
    assert detect(data) in (HTTP1, HTTP2)


def test_server_first_protocols_and_long_lines():
    assert detect(b"") is None and detect(b"", final=True) == L4
    assert detect(b"GET /" + b"a" * 9000) == HTTP1   # h11 refuses it with a status, not as L4


def test_server_connection_sniffs_then_hands_over():
    from waypoint.http.events import Request
    from waypoint.http.serverconn import Detected, ServerConnection

    h1 = ServerConnection()
    for b in (b"GE", b"T / HT", b"TP/1.1\r\nhost: a\r\n\r\n"):
        h1.receive_data(b)
    evs = h1.events()
    assert evs[0] == Detected(HTTP1) and isinstance(evs[1], Request) and h1.keep_alive
    h2c = ServerConnection()
    h2c.receive_data(H2_PREFACE[:10])
    assert h2c.events() == [] and h2c.protocol is None
    h2c.receive_data(H2_PREFACE[10:])
    assert h2c.events()[0] == Detected(HTTP2) and h2c.data_to_send()      # our SETTINGS go out
    quiet = ServerConnection()
    quiet.receive_data(b"GET")
    quiet.sniff_timeout()                                                  # a client that stalls
    assert quiet.events() == [Detected(L4, b"GET")] and not quiet.keep_alive
    closed = ServerConnection()
    closed.receive_data(b"\x00")
    assert closed.events() == [Detected(L4, b"\x00")]
