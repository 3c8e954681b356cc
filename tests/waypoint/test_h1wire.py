"""The waypoint's own HTTP/1.1 parser against h11 as the oracle (hypothesis): a well-formed
message parses to the same events in both, whatever the read boundaries; a mangled one is
either refused by ours or parsed exactly as h11 parses it (ours may refuse more: bare CR/LF,
obsolete folding, control characters), so nothing h11 calls malformed ever gets through."""
import h11
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from waypoint.http.events import Data, EndOfMessage, ProtocolError, Request, Response
from waypoint.http.h1 import MAX_HEADER_BYTES, HTTP1Client, HTTP1Server
from waypoint.http.h1wire import WireError, find_head, parse_chunk_head

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1,
                max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xff).filter(lambda c: c != "\x7f"),
                max_size=20).map(lambda v: v.encode("latin-1"))
TARGET = st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&%._~-", min_size=0, max_size=20).map(lambda t: "/" + t)


@st.composite
def requests(draw):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]) | TOKEN.map(str.upper))
    fields = [(draw(TOKEN).encode(), draw(VALUE)) for _ in range(draw(st.integers(0, 6)))]
    fields = [(k, v) for k, v in fields if k.lower() not in (b"host", b"content-length", b"transfer-encoding",
                                                              b"connection", b"expect")]
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    fields.insert(draw(st.integers(0, len(fields))), (b"Host", draw(st.sampled_from([b"web", b"web:80", b"[::1]:8"]))))
    if framing == "length":
        fields.append((b"Content-Length", str(len(body)).encode()))
        wire_body = body
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        parts = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if body[a:b]]
        wire_body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        body = wire_body = b""
    ows = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
    head = b"%s %s HTTP/1.1\r\n" % (method.encode(), draw(TARGET).encode())
    head += b"".join(k + b":" + ows + v + ows + b"\r\n" for k, v in fields)
    return head + b"\r\n" + wire_body


def h11_events(wire: bytes):
    """What h11 makes of one request: [("req", method, target, headers), ("body", bytes), ("end", trailers)]
    or None when it refuses."""
    c = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    c.receive_data(wire)
    out, body = [], b""
    try:
        while True:
            ev = c.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return None if not out or out[-1][0] != "end" else out
            if isinstance(ev, h11.Request):
                out.append(("req", ev.method.decode(), ev.target.decode("latin-1"),
                            [(k.decode(), v.decode("latin-1")) for k, v in ev.headers]))
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                out += [("body", body), ("end", [(k.decode(), v.decode("latin-1")) for k, v in ev.headers])]
                return out
    except h11.RemoteProtocolError:
        return None


def ours(wire: bytes, cuts=()):
    s = HTTP1Server()
    evs = []
    bounds = [0] + sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]
    for a, b in zip(bounds, bounds[1:]):
        if a == b:
            continue   # b"" would mean EOF
        s.receive_data(wire[a:b])
        evs += s.events()
    if any(isinstance(e, ProtocolError) for e in evs) or not evs or not isinstance(evs[-1], EndOfMessage):
        return None
    req = evs[0]
    return [("req", req.method, req.target, list(req.headers)),
            ("body", b"".join(e.data for e in evs if isinstance(e, Data))), ("end", list(evs[-1].trailers))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.integers(0, 400), max_size=4))
def test_well_formed_requests_parse_as_h11_parses_them(wire, cuts):
    expected = h11_events(wire)
    assert expected is not None, wire
    assert ours(wire, cuts) == expected


MANGLE = st.sampled_from([b"\r", b"\n", b" ", b"\t", b"\x00", b"\x01", b"\x0b", b":", b",", b"\r\n ", b"\r\n",
                          b"0", b"a", b"\x80", b"\xff", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                          b"Content-Length: 1, 2\r\n", b"Host: x\r\n"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.lists(st.tuples(st.integers(0, 500), MANGLE, st.integers(0, 2)), min_size=1, max_size=3))
def test_mangled_requests_are_refused_or_parsed_as_h11_does(wire, edits):
    for at, insert, drop in edits:
        at %= len(wire) + 1
        wire = wire[:at] + insert + wire[at + drop:]
    got = ours(wire)
    if got is not None:   # accepted: h11 must accept it too, with the very same meaning
        assert got == h11_events(wire), wire


@pytest.mark.parametrize("wire,words", [
    (b"GET / HTTP/1.1\nhost: a\n\n", "bare CR or LF"),
    (b"GET / HTTP/1.1\r\nhost: a\nx: y\r\n\r\n", "bare CR or LF"),
    (b"GET / HTTP/1.1\r\nhost: a\rx: y\r\n\r\n", "bare CR or LF"),
    (b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x01b\r\n\r\n", "control character"),
    (b"GET / HTTP/1.1\r\nhost: a\r\nx-y : z\r\n\r\n", "whitespace before the colon"),
    (b"GET / HTTP/1.1\r\n\r\n", "Missing mandatory Host"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1, 2\r\n\r\n", "conflicting Content-Length"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n", "bad Content-Length"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
     "Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nz\r\n", "bad chunk size"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n", "not followed by CRLF"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\nab", "bare CR or LF"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx : y\r\n\r\n", "illegal header line"),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\ncontent-length: 5\r\n\r\n",
     "content-length field in the trailers"),
    (b" GET / HTTP/1.1\r\n", "whitespace"),
    (b"GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n", "origin form"),
])
def test_strict_refusals_name_the_problem(wire, words):
    s = HTTP1Server()
    s.receive_data(wire)
    err = s.events()[-1]
    assert isinstance(err, ProtocolError) and err.status == 400 and words in err.message, err


def test_head_limits_and_chunk_line_limits():
    with pytest.raises(WireError, match="Receive buffer too long"):
        find_head(b"GET / HTTP/1.1\r\nx: " + b"a" * 100, 0, 64)
    assert find_head(b"GET / HTTP/1.1\r\nhost: a\r\n", 0, 64) == -1   # incomplete, fine so far
    assert parse_chunk_head(b"1a;ext=1 \r\n", 0) == (26, 11) and parse_chunk_head(b"1a", 0) is None
    with pytest.raises(WireError, match="too long"):
        parse_chunk_head(b"1" * 5000, 0)


def test_response_framing_as_h11():
    """Responses: chunked for an HTTP/1.1 client when no length is given, close-delimited for
    HTTP/1.0, no body for HEAD / 204 / 304, and `connection: close` on the last exchange."""
    s = HTTP1Server()
    s.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    s.events()
    out = s.send(Response(200, (("x", "1"),), "OK")) + s.send(Data(b"abc")) + s.send(EndOfMessage())
    assert out == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert s.keep_alive
    s.receive_data(b"HEAD / HTTP/1.0\r\n\r\n")
    assert isinstance(s.events()[0], Request)
    out = s.send(Response(200, (("content-length", "3"),))) + s.send(Data(b"abc")) + s.send(EndOfMessage())
    assert out == b"HTTP/1.1 200 \r\ncontent-length: 3\r\nconnection: close\r\n\r\n" and not s.keep_alive


def test_client_reads_every_response_framing():
    c = HTTP1Client()
    c.send(Request("GET", "/", "a"))
    c.send(EndOfMessage())
    c.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    evs = c.events()
    assert [type(e) for e in evs] == [Response, Response, Data, EndOfMessage] and evs[2].data == b"ok"
    assert c.keep_alive
    c.send(Request("HEAD", "/", "a"))
    c.send(EndOfMessage())
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
    assert [type(e) for e in c.events()] == [Response, EndOfMessage] and c.keep_alive
    c.send(Request("GET", "/", "a"))
    c.send(EndOfMessage())
    c.receive_data(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    assert [type(e) for e in c.events()] == [Response, Data]
    c.receive_data(b"")
    assert c.events() == [EndOfMessage()] and not c.keep_alive


def test_a_head_seen_before_parses_the_same_and_a_refused_one_is_refused_every_time():
    """Heads are remembered by their bytes (h1wire._SEEN): the same bytes give the same
    events, one byte more or less is another head, and a refusal is never remembered."""
    def parse(wire: bytes) -> list:
        s = HTTP1Server()
        s.receive_data(wire)
        return s.events()

    head = b"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\n"
    first, again = parse(head + b"abc"), parse(head + b"abc")
    assert first == again == [Request("POST", "/x", "web", (("host", "web"), ("content-length", "3"))),
                              Data(b"abc"), EndOfMessage()]
    other = parse(head.replace(b"/x", b"/y").replace(b": 3", b": 2") + b"ab")
    assert other[0].target == "/y" and other[1:] == [Data(b"ab"), EndOfMessage()]
    smuggle = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2):
        (err,) = parse(smuggle)
        assert isinstance(err, ProtocolError) and err.status == 400 and "smuggling" in err.message
