"""HTTP/2 adapter against h2 peers with real frames: requests, gRPC trailers, flow control,
and the connection-ending refusals (rapid reset, header floods, garbage)."""
import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
from hypothesis import given, settings, strategies as st

from waypoint.http.events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, StreamReset
from waypoint.http.h2 import MAX_EARLY_RESETS, WINDOW, HTTP2Client, HTTP2Server

from wp_helpers import Clock


def peer(client_side=True):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    c.initiate_connection()
    return c


def pump(a, b):
    """Move bytes both ways until quiet: a is an h2 peer, b our adapter. Returns a's events."""
    events = []
    for _ in range(10):
        out = a.data_to_send()
        if out:
            b.receive_data(out)
        back = b.data_to_send()
        if back:
            events += a.receive_data(back)
        if not out and not back:
            break
    return events


def test_request_response_with_body_and_trailers_grpc_style():
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"echo:7070"),
                            (b":path", b"/grpc.Echo/Ping"), (b"content-type", b"application/grpc"),
                            (b"te", b"trailers")])
    client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    pump(client, server)
    req, data, end = server.events()
    assert isinstance(req, Request) and req.is_grpc and (req.method, req.target, req.authority, req.stream_id) == (
        "POST", "/grpc.Echo/Ping", "echo:7070", 1) and req.http_version == "2"
    assert data == Data(b"\x00\x00\x00\x00\x02hi", 1) and end == EndOfMessage(stream_id=1)
    server.ack(1, len(data.data))
    wire = server.send(Response(200, (("content-type", "application/grpc"), ("connection", "close")), stream_id=1))
    wire += server.send(Data(b"\x00\x00\x00\x00\x00", 1))
    wire += server.send(EndOfMessage((("grpc-status", "0"),), 1))
    evs = client.receive_data(wire) + pump(client, server)
    resp = next(e for e in evs if isinstance(e, h2.events.ResponseReceived))
    assert dict(resp.headers)[b":status"] == b"200" and b"connection" not in dict(resp.headers)
    trailers = next(e for e in evs if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0")] and server.keep_alive


def test_large_body_waits_for_window_updates():
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    pump(client, server)
    server.events()
    body = b"x" * 200_000                         # over the client's default 65,535-byte window
    wire = server.send(Response(200, (), stream_id=1)) + server.send(Data(body, 1))
    wire += server.send(EndOfMessage(stream_id=1))
    assert len(wire) < 70_000                     # the rest waits for the window
    got, ended = b"", False
    first = client.receive_data(wire)
    for _ in range(50):
        for ev in first + pump(client, server):
            if isinstance(ev, h2.events.DataReceived):
                got += ev.data
                client.acknowledge_received_data(ev.flow_controlled_length, 1)
            ended |= isinstance(ev, h2.events.StreamEnded)
        first = []
        if ended:
            break
    assert got == body and ended


def test_our_receive_window_only_reopens_when_the_app_reads():
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")])
    pump(client, server)
    before = client.local_flow_control_window(1)
    assert before == WINDOW
    sent = 0
    while sent < WINDOW * 3 // 4:                 # h2 only sends WINDOW_UPDATE past half the window
        client.send_data(1, b"y" * 16384)
        sent += 16384
        pump(client, server)
    assert client.local_flow_control_window(1) == WINDOW - sent     # read by us, not by the app yet
    got = sum(len(e.data) for e in server.events() if isinstance(e, Data))
    assert got == sent
    server.ack(1, got)
    pump(client, server)
    assert client.local_flow_control_window(1) == WINDOW


def test_rapid_reset_closes_the_connection_with_enhance_your_calm():
    clock = Clock()
    client, server = peer(), HTTP2Server(clock)
    pump(client, server)
    closed = []
    for i in range(MAX_EARLY_RESETS + 1):
        sid = 1 + 2 * i
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                                  (b":path", b"/")], end_stream=True)
        client.reset_stream(sid)
        closed += [e for e in pump(client, server) if isinstance(e, h2.events.ConnectionTerminated)]
    evs = server.events()
    err = [e for e in evs if isinstance(e, ProtocolError)]
    assert err and "rapid reset" in err[0].message and not server.keep_alive
    assert closed and closed[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sum(isinstance(e, StreamReset) for e in evs) == MAX_EARLY_RESETS + 1


def test_answers_after_our_goaway_are_silent():
    # a stream's task still answering once the connection is closed must not raise: that
    # ended the connection before the rapid-reset GOAWAY was written
    client, server = peer(), HTTP2Server(Clock())
    pump(client, server)
    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    client.send_headers(1, get, end_stream=True)
    pump(client, server)
    wire = b""
    for i in range(MAX_EARLY_RESETS + 1):   # a rapid-reset flood on other streams
        client.send_headers(3 + 2 * i, get, end_stream=True)
        client.reset_stream(3 + 2 * i)
        wire += client.data_to_send()
    server.receive_data(wire)
    assert any(isinstance(e, ProtocolError) for e in server.events()) and server.closed
    goaway = server.send(Response(200, (), stream_id=1))
    assert hyperframe.frame.Frame.parse_frame_header(goaway[:9])[0].type == 0x7   # still the GOAWAY, whoever writes it
    assert server.send(Data(b"x", 1)) == b"" and server.send_headers_only(Response(200, (), stream_id=1)) == b""


def test_resets_spread_over_time_or_after_the_response_are_fine():
    clock = Clock()
    client, server = peer(), HTTP2Server(clock)
    pump(client, server)
    for i in range(3 * MAX_EARLY_RESETS):
        sid = 1 + 2 * i
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                                  (b":path", b"/")], end_stream=True)
        client.reset_stream(sid)
        pump(client, server)
        clock.advance(0.05)                      # 20 resets a second: a client cancelling, not an attack
    assert server.keep_alive and not any(isinstance(e, ProtocolError) for e in server.events())


def test_oversized_header_block_and_continuation_flood_end_the_connection():
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/"),
                            (b"x-big", b"v" * 40_000)], end_stream=True)
    pump(client, server)
    (err,) = [e for e in server.events() if isinstance(e, ProtocolError)]
    assert not server.keep_alive and "malformed HTTP/2" in err.message
    # CONTINUATION frames without END_HEADERS, forever: refused long before memory runs out.
    flood = HTTP2Server()
    pre = peer()
    flood.receive_data(pre.data_to_send())
    f = hyperframe.frame.HeadersFrame(1)
    f.data = b"\x82"                                       # :method GET
    flood.receive_data(f.serialize())
    for _ in range(2000):
        c = hyperframe.frame.ContinuationFrame(1)
        c.data = b"\x00\x01a\x01b"                         # a literal header a: b
        flood.receive_data(c.serialize())
        if flood.failed:
            break
    assert flood.failed is not None and b"" != flood.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_the_preface_is_a_protocol_error_not_an_exception(data):
    server = HTTP2Server()
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + data)
    for ev in server.events():
        assert isinstance(ev, (Request, Data, EndOfMessage, ProtocolError, StreamReset, ConnectionClosed))


def test_client_side_to_an_h2_backend():
    backend, ours = peer(client_side=False), HTTP2Client()
    backend.receive_data(ours.data_to_send())
    sid = ours.next_stream_id()
    wire = ours.send(Request("GET", "/x?y=1", "web:8080", (("host", "web:8080"), ("x-a", "1")), stream_id=sid))
    wire += ours.send(EndOfMessage(stream_id=sid))
    evs = backend.receive_data(wire)
    req = next(e for e in evs if isinstance(e, h2.events.RequestReceived))
    assert (b":path", b"/x?y=1") in req.headers and (b":authority", b"web:8080") in req.headers
    assert not any(k == b"host" for k, _ in req.headers)
    backend.send_headers(sid, [(b":status", b"503"), (b"x-b", b"2")])
    backend.send_data(sid, b"down", end_stream=True)
    ours.receive_data(backend.data_to_send())
    resp, data, end = [e for e in ours.events()]
    assert isinstance(resp, Response) and resp.status == 503 and resp.header("x-b") == "2"
    assert data.data == b"down" and isinstance(end, EndOfMessage)
    ours.receive_data(b"")
    assert ours.events() == [ConnectionClosed("peer closed the connection")]


def test_answering_a_stream_the_client_reset_is_silent():
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    client.reset_stream(1)
    pump(client, server)
    assert isinstance(server.events()[-1], StreamReset)
    assert server.send(Response(200, (), stream_id=1)) == b"" and server.send(Data(b"x", 1)) == b""
    assert server.keep_alive


def test_answering_a_reset_stream_h2_has_already_forgotten_is_silent():
    # h2 prunes closed streams when more are opened: answering one then is a "new" stream
    # below the highest id (StreamIDTooLowError), which used to end the whole connection
    client, server = peer(), HTTP2Server()
    pump(client, server)
    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    client.send_headers(1, get, end_stream=True)
    client.reset_stream(1)
    for sid in (3, 5, 7):
        client.send_headers(sid, get, end_stream=True)
    pump(client, server)
    server.events()
    assert server.send(Response(200, (), stream_id=1)) == b"" and server.send(Data(b"x", 1)) == b""
    assert server.send_headers_only(Response(200, (), stream_id=1)) == b""
    assert server.keep_alive and server.send(Response(200, (), stream_id=3)) != b""


def test_client_side_grpc_trailers_and_a_large_request_body():
    backend, ours = peer(client_side=False), HTTP2Client()
    backend.receive_data(ours.data_to_send())
    sid = ours.next_stream_id()
    wire = ours.send(Request("POST", "/grpc.Echo/Ping", "echo:7070",
                             (("content-type", "application/grpc"), ("te", "trailers")), stream_id=sid))
    wire += ours.send(Data(b"z" * 100_000, sid))          # more than the backend's initial 64 KiB window
    wire += ours.send(EndOfMessage(stream_id=sid))
    got, ended = 0, False
    for _ in range(20):
        for ev in backend.receive_data(wire):
            if isinstance(ev, h2.events.RequestReceived):
                assert (b"te", b"trailers") in ev.headers
            if isinstance(ev, h2.events.DataReceived):
                got += len(ev.data)
                backend.acknowledge_received_data(ev.flow_controlled_length, sid)
            ended |= isinstance(ev, h2.events.StreamEnded)
        ours.receive_data(backend.data_to_send())
        ours.events()
        wire = ours.data_to_send()
        if ended:
            break
    assert got == 100_000 and ended
    backend.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    backend.send_data(sid, b"\x00\x00\x00\x00\x00")
    backend.send_headers(sid, [(b"grpc-status", b"14"), (b"grpc-message", b"down")], end_stream=True)
    ours.receive_data(backend.data_to_send())
    resp, data, end = ours.events()
    assert resp.status == 200 and data.data == b"\x00" * 5
    assert end == EndOfMessage((("grpc-status", "14"), ("grpc-message", "down")), sid)   # one end, with trailers


def test_an_answer_to_head_carries_no_content():
    # a local answer (the waypoint's 404 or redirect) has a body for GET; on a HEAD stream it
    # must not be sent: h2 clients treat DATA there as a protocol error of the stream
    client, server = peer(), HTTP2Server()
    pump(client, server)
    client.send_headers(1, [(b":method", b"HEAD"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    pump(client, server)
    assert server.events()[0].method == "HEAD"
    wire = server.send(Response(404, (("content-length", "31"),), stream_id=1))
    wire += server.send(Data(b"no route of Service x matches /", 1)) + server.send(EndOfMessage(stream_id=1))
    evs = client.receive_data(wire)
    assert not [e for e in evs if isinstance(e, h2.events.DataReceived) and e.data]   # END_STREAM: empty DATA
    assert isinstance(evs[-1], h2.events.StreamEnded)
    assert dict(evs[0].headers)[b":status"] == b"404" and dict(evs[0].headers)[b"content-length"] == b"31"
    # the next stream, a GET, gets its body as before
    client.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    pump(client, server)
    server.events()
    wire = server.send(Response(404, (), stream_id=3)) + server.send(Data(b"body", 3))
    wire += server.send(EndOfMessage(stream_id=3))
    assert any(isinstance(e, h2.events.DataReceived) and e.data == b"body" for e in client.receive_data(wire))
