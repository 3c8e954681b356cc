"""HTTP/1.1 adapter with real bytes: requests, keep-alive, and the refusals (smuggling, 431)."""
import pytest
from hypothesis import given, settings, strategies as st

from waypoint.http.events import (ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response,
                                  end_to_end, simple_response)
from waypoint.http.h1 import MAX_HEADERS, HTTP1Client, HTTP1Server


def feed(side, data):
    side.receive_data(data)
    return side.events()


def test_requests_and_keep_alive_round_trip():
    s = HTTP1Server()
    evs = feed(s, b"POST /a?b=1 HTTP/1.1\r\nHost: web:80\r\nContent-Length: 5\r\nX-Y: z\r\n\r\nhello"
                  b"GET /next HTTP/1.1\r\nhost: web\r\n\r\n")
    req, body, end = evs
    assert isinstance(req, Request) and (req.method, req.target, req.authority, req.path, req.query) == (
        "POST", "/a?b=1", "web:80", "/a", "b=1")
    assert req.header("x-y") == "z" and req.host == "web" and body == Data(b"hello") and end == EndOfMessage()
    out = b"".join(s.send(e) for e in simple_response(200, "ok"))
    assert out.startswith(b"HTTP/1.1 200 \r\n") and out.endswith(b"\r\n\r\nok\n") and s.keep_alive
    (nxt, end2) = s.events()                      # the pipelined request comes after the first cycle
    assert nxt.target == "/next" and isinstance(end2, EndOfMessage)
    s.send(Response(204, (("content-length", "0"),)))
    s.send(EndOfMessage())
    assert feed(s, b"") == [ConnectionClosed("peer closed the connection")]


def test_chunked_body_and_trailers():
    s = HTTP1Server()
    evs = feed(s, b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n")
    assert [e.data for e in evs if isinstance(e, Data)] == [b"abc", b"de"]
    assert evs[-1] == EndOfMessage((("x-sum", "5"),))


@pytest.mark.parametrize("wire,status,words", [
    (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd", 400,
     "conflicting Content-Length"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501, "Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n", 400, "malformed HTTP/1.1"),
    (b"GET / HTTP/1.1\r\nhost: a\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
     431, "too many header fields"),
    (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"v" * 20000, 431, "Receive buffer too long"),
    (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"v" * 20000 + b"\r\n\r\n", 431, "header fields too large"),
    (b"GET / HTTP/1.1\r\nhost: a\r\n folded: x\r\n\r\n", 400, "obsolete line folding"),   # refused, not joined
    (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400, "multiple Host"),
    (b"GET\x00 / HTTP/1.1\r\n\r\n", 400, "malformed"),
])
def test_refusals_answer_once_and_close(wire, status, words):
    s = HTTP1Server()
    evs = feed(s, wire)
    err = evs[-1]
    assert isinstance(err, ProtocolError) and err.status == status and words in err.message, err
    assert not s.keep_alive and feed(s, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n") == []   # nothing more is parsed
    answer = s.error_response(err)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and b"connection: close\r\n" in answer
    assert answer.endswith(err.message.encode() + b"\n")


def test_no_error_answer_in_the_middle_of_a_response():
    s = HTTP1Server()
    feed(s, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    s.send(Response(200, (("content-length", "10"),)))
    assert s.error_response(ProtocolError(400, "x")) == b""


def test_client_side_to_a_backend():
    c = HTTP1Client()
    out = c.send(Request("GET", "/x", "web:8080", (("accept", "*/*"),)))
    out += c.send(EndOfMessage())
    assert out == b"GET /x HTTP/1.1\r\nhost: web:8080\r\naccept: */*\r\n\r\n"
    resp, body, end = feed(c, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
    assert (resp.status, resp.reason, body.data, end) == (503, "Service Unavailable", b"no", EndOfMessage())
    assert c.keep_alive
    c.send(Request("GET", "/y", "web", ()))
    c.send(EndOfMessage())
    (err,) = feed(c, b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n")
    assert err.status == 502 and "backend response refused" in err.message
    c2 = HTTP1Client()
    c2.send(Request("GET", "/", "a", ()))
    c2.send(EndOfMessage())
    (err,) = feed(c2, b"HTTQ/9 nonsense\r\n\r\n")
    assert err.status == 502


def test_hop_by_hop_headers_are_not_forwarded():
    h = (("connection", "keep-alive, x-private"), ("x-private", "1"), ("keep-alive", "5"), ("te", "trailers"),
         ("transfer-encoding", "chunked"), ("x-ok", "1"))
    assert end_to_end(h) == (("te", "trailers"), ("x-ok", "1"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_ever_gives_protocol_error_events(data):
    s = HTTP1Server()
    for i in range(0, len(data), 7):
        s.receive_data(data[i:i + 7])
        for ev in s.events():
            assert isinstance(ev, (Request, Data, EndOfMessage, ProtocolError, ConnectionClosed))
            if isinstance(ev, ProtocolError):
                assert ev.status in (400, 431, 501) and s.error_response(ev).startswith(b"HTTP/1.1 ")


def test_expect_100_continue():
    s = HTTP1Server()
    (req,) = feed(s, b"PUT /u HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    assert req.header("expect") == "100-continue"
    assert s.send(Response(100)) == b"HTTP/1.1 100 \r\n\r\n"
    body, end = feed(s, b"abc")
    assert body.data == b"abc" and isinstance(end, EndOfMessage)
