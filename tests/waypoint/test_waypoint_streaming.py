"""Request bodies stream through the waypoint (real TLS and HBONE in and out, as in
test_waypoint_process): curl uploads larger than the old 8 MiB cap, chunked and slow ones,
`100 Continue`, a body the backend receives before the client finished sending it, HTTP/2
DATA both ways, and retries that replay a body within the replay bound but never one that
streamed past it."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading

import trio

import pytest

from waypoint.filters.retry import MAX_REPLAY_BYTES
from waypoint.http.events import Data, EndOfMessage, Request, Response, simple_response
from wp_process import NAMESPACE, acurl, grpc_server, h2_backend, mesh, retry_route, service, workload

DOWNLOAD = 16 * 1024 * 1024
SINK, FLAKY, H2, GRPC = "127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"
ROUTES = retry_route("flaky")


class SinkHandler(http.server.BaseHTTPRequestHandler):
    """Reads the body (Content-Length or chunked, as it comes) and answers `sha256 length`;
    in flaky mode every other request gets 503 after its body was read."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("content-length") or 0)
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def do_POST(self):
        srv = self.server
        digest, size = hashlib.sha256(), 0
        for chunk in self._body():
            digest.update(chunk)
            size += len(chunk)
            if size >= 1000:
                srv.first_part.set()   # the client's first part arrived
        with srv.lock:
            srv.count += 1
            n = srv.count
            srv.bodies.append((size, digest.hexdigest(), dict(self.headers)))
        status = 503 if srv.flaky and n % 2 == 1 else 200
        out = f"{digest.hexdigest()} {size}\n".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_PUT = do_POST

    def log_message(self, *a):
        pass


def sink(address: str, flaky: bool = False):
    srv = http.server.ThreadingHTTPServer((address, 0), SinkHandler)
    srv.daemon_threads = True
    srv.flaky, srv.count, srv.lock, srv.bodies, srv.first_part = flaky, 0, threading.Lock(), [], threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


async def h2_sink(nursery) -> tuple[int, list, list]:
    """An HTTP/2 (prior knowledge) backend on the waypoint's own adapter: hashes each request
    body, acknowledging DATA as it reads it (so flow control is exercised end to end); a GET
    gets DOWNLOAD bytes, queued in its adapter as far as the waypoint's window allows."""
    seen: list = []
    downloads: list = []   # (adapter, stream id) of each download

    def connection():
        digests: dict[int, tuple] = {}

        def answer(h2, events) -> bytes:
            out = b""
            for ev in events:
                if isinstance(ev, Request) and ev.method == "GET":   # a download of DOWNLOAD bytes
                    downloads.append((h2, ev.stream_id))
                    out += h2.send(Response(200, (("content-length", str(DOWNLOAD)),), stream_id=ev.stream_id))
                    out += h2.send(Data(b"d" * DOWNLOAD, ev.stream_id))   # queued beyond the window
                    out += h2.send(EndOfMessage(stream_id=ev.stream_id))
                elif isinstance(ev, Request):
                    digests[ev.stream_id] = (hashlib.sha256(), [0])
                elif isinstance(ev, Data) and ev.stream_id in digests:
                    digests[ev.stream_id][0].update(ev.data)
                    digests[ev.stream_id][1][0] += len(ev.data)
                    h2.ack(ev.stream_id, len(ev.data))
                elif isinstance(ev, EndOfMessage) and ev.stream_id in digests:
                    d, n = digests.pop(ev.stream_id)
                    seen.append((n[0], d.hexdigest()))
                    for part in simple_response(200, f"{d.hexdigest()} {n[0]}", stream_id=ev.stream_id):
                        out += h2.send(part)
            return out
        return answer

    return await h2_backend(nursery, H2, connection), seen, downloads


def grpc_chat(address: str):
    """A grpcio server with a bidirectional-streaming echo (raw bytes, no stubs)."""
    import grpc

    def chat(requests, context):
        for r in requests:
            yield b"echo " + r
    return grpc_server(address, "test.Chat", "Talk", grpc.stream_stream_rpc_method_handler(chat))


@pytest.fixture
async def wp(tmp_path):
    servers = {"sink": sink(SINK), "flaky": sink(FLAKY, flaky=True)}
    port = {k: s.server_address[1] for k, s in servers.items()}
    grpc_server, grpc_port = grpc_chat(GRPC)
    async with mesh(tmp_path) as m:
        h2_port, m.h2_seen, m.h2_downloads = await h2_sink(m.nursery)
        text = (NAMESPACE + service("sink", "10.96.0.40", port["sink"], "sink") + workload("sink", SINK, "sink")
                + service("flaky", "10.96.0.41", port["flaky"], "flaky") + workload("flaky", FLAKY, "flaky")
                + ROUTES + service("h2", "10.96.0.42", h2_port, "h2", port_name="http2") + workload("h2", H2, "h2")
                + service("chat", "10.96.0.43", grpc_port, "chat", port_name="grpc") + workload("chat", GRPC, "chat"))
        await m.start(text, [SINK, FLAKY, H2, GRPC])
        m.servers = servers
        yield m
    grpc_server.stop(0)
    for s in servers.values():
        s.shutdown()


def payload(tmp_path, size: int):
    data = os.urandom(size)
    path = tmp_path / f"body-{size}"
    path.write_bytes(data)
    return path, f"{hashlib.sha256(data).hexdigest()} {size}\n"


async def test_uploads_larger_than_the_old_cap_stream_with_either_framing(wp, tmp_path):
    port = await wp.bridge("10.96.0.40:80")
    path, expected = payload(tmp_path, 20 * 1024 * 1024)   # the old limit was 8 MiB (then 413)
    out = await acurl("-v", "--data-binary", f"@{path}", f"http://127.0.0.1:{port}/up")
    assert out.stdout == expected, out.stderr[-2000:]
    assert "HTTP/1.1 100 Continue" in out.stderr   # curl asked (Expect: 100-continue), the waypoint answered
    out = await acurl("-H", "transfer-encoding: chunked", "--data-binary", f"@{path}", f"http://127.0.0.1:{port}/c")
    assert out.stdout == expected
    seen = wp.servers["sink"].bodies
    assert seen[0][2].get("content-length") == str(20 * 1024 * 1024) and "expect" not in seen[0][2]
    assert seen[1][2].get("transfer-encoding") == "chunked"   # length unknown: chunked upstream too
    # the replay buffer gave up on these bodies (not retryable), it did not hold them
    assert wp.waypoint.metrics.value("istio_requests_total", response_code="200") == 2


async def test_a_slow_upload_arrives_whole(wp, tmp_path):
    port = await wp.bridge("10.96.0.40:80")
    path, expected = payload(tmp_path, 1024 * 1024)
    out = await acurl("--limit-rate", "700k", "-T", str(path), f"http://127.0.0.1:{port}/slow")
    assert out.stdout == expected


async def test_the_backend_reads_the_body_before_the_client_finished_it(wp):
    """Streaming, shown without timing: the client sends the rest only once the backend has
    the first part. A waypoint that buffered the body would wait forever here."""
    port = await wp.bridge("10.96.0.40:80")
    srv = wp.servers["sink"]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST /s HTTP/1.1\r\nHost: sink\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"800\r\n" + b"a" * 2048 + b"\r\n")
        got_first = await trio.to_thread.run_sync(srv.first_part.wait, 30)
        assert got_first, "the backend never saw the first part while the client held back the rest"
        await stream.send_all(b"5\r\nbbbbb\r\n0\r\n\r\n")
        answer = b""
        while b"\n" not in answer.partition(b"\r\n\r\n")[2]:
            answer += await stream.receive_some(65536)
    body = b"a" * 2048 + b"bbbbb"
    assert answer.startswith(b"HTTP/1.1 200 ") and f"{hashlib.sha256(body).hexdigest()} 2053".encode() in answer


async def test_retries_replay_a_streamed_body_within_the_bound_only(wp, tmp_path):
    port = await wp.bridge("10.96.0.41:80")
    srv = wp.servers["flaky"]
    small, small_expected = payload(tmp_path, 32 * 1024)   # under the 64 KiB replay bound
    # rate-limited: the body is not all there when the first attempt starts, so it is pumped
    out = await acurl("--limit-rate", "64k", "--data-binary", f"@{small}", "-w", "%{http_code}",
                      f"http://127.0.0.1:{port}/r")
    assert out.stdout == small_expected + "200"
    # the 503'd attempt and the retry got the same body
    assert [(n, d) for n, d, _ in srv.bodies] == [(32 * 1024, small_expected.split()[0])] * 2
    big, big_expected = payload(tmp_path, MAX_REPLAY_BYTES * 4)
    out = await acurl("--data-binary", f"@{big}", "-w", "%{http_code}", f"http://127.0.0.1:{port}/big")
    assert out.stdout == big_expected + "503"   # streamed past the bound: not retried
    assert srv.count == 3
    assert wp.waypoint.metrics.value("trellis_waypoint_retries_total", destination_service="default/flaky") == 1


async def test_http2_upload_streams_with_flow_control(wp, tmp_path):
    port = await wp.bridge("10.96.0.42:80")
    path, expected = payload(tmp_path, 12 * 1024 * 1024)   # several times either side's window
    out = await acurl("--http2-prior-knowledge", "--data-binary", f"@{path}", f"http://127.0.0.1:{port}/h2")
    assert out.stdout == expected, out.stderr[-2000:]
    assert wp.h2_seen == [(12 * 1024 * 1024, expected.split()[0])]


async def test_a_slow_http2_reader_holds_the_backend_back(wp):
    """Response backpressure over HTTP/2: while the client keeps its 64 KiB window closed, the
    waypoint stops reading the backend's stream (so stops acknowledging it) and the backend's
    bytes wait at the backend; once the client reads, all of it arrives. A waypoint that
    buffered the response would take the whole 16 MiB from the backend at once."""
    import h2.config
    import h2.connection
    import h2.events
    port = await wp.bridge("10.96.0.42:80")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "GET"), (":path", "/download"), (":scheme", "http"),
                              (":authority", "h2")], end_stream=True)
    received, ended = 0, False

    def backend_left() -> int:
        return wp.h2_downloads[0][0].queued(wp.h2_downloads[0][1]) if wp.h2_downloads else DOWNLOAD

    async def pump(ack: bool) -> None:
        nonlocal received, ended
        data = await stream.receive_some(65536)
        for ev in client.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                received += len(ev.data)
                if ack:
                    client.acknowledge_received_data(ev.flow_controlled_length, sid)
            ended = ended or isinstance(ev, h2.events.StreamEnded)
        await stream.send_all(client.data_to_send())

    async with stream:
        await stream.send_all(client.data_to_send())
        with trio.fail_after(15):       # the response has started (slow on a loaded machine)
            while not (received and wp.h2_downloads):
                await pump(ack=False)
        with trio.move_on_after(1.5):   # a while for the bytes to go wherever a waypoint lets them
            while True:
                await pump(ack=False)
        # the backend sent its 4 MiB window toward the waypoint and no more (a buffering
        # waypoint had taken it all by now: ~13 MiB sat in its queue for the client)
        assert backend_left() >= DOWNLOAD - 5 * 1024 * 1024
        assert 0 < received <= 65535 and wp.h2_downloads
        client.acknowledge_received_data(received, sid)   # the client reads now: everything comes
        await stream.send_all(client.data_to_send())
        with trio.fail_after(30):
            while not ended:
                await pump(ack=True)
    assert received == DOWNLOAD and backend_left() == 0


async def test_grpc_bidirectional_streaming_goes_through(wp):
    """Each message is sent only after the reply to the previous one came back: that needs
    both directions of the stream open at once through the waypoint (no buffered body)."""
    import queue

    import grpc
    port = await wp.bridge("10.96.0.43:80")

    def talk() -> list[bytes]:
        outbox: queue.Queue = queue.Queue()
        outbox.put(b"m0")

        def messages():
            while (m := outbox.get(timeout=20)) is not None:
                yield m
        replies = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for reply in channel.stream_stream("/test.Chat/Talk")(messages(), timeout=30):
                replies.append(reply)
                outbox.put(f"m{len(replies)}".encode() if len(replies) < 5 else None)
        return replies
    assert await trio.to_thread.run_sync(talk) == [f"echo m{i}".encode() for i in range(5)]


async def test_idle_and_stalled_clients_are_cut_off(wp, monkeypatch):
    """The idle timeout between requests (the idle watch), and a body that stops coming (408)."""
    import waypoint.conn
    monkeypatch.setattr(waypoint.conn, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(waypoint.conn, "REQUEST_READ_TIMEOUT", 0.3)
    port = await wp.bridge("10.96.0.40:80")

    async def converse(data: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        got = b""
        async with stream:
            await stream.send_all(data)
            with trio.fail_after(20):   # a bound for a broken waypoint, not a measurement
                while chunk := await stream.receive_some(65536):
                    got += chunk
        return got
    idle = await converse(b"POST /i HTTP/1.1\r\nHost: sink\r\nContent-Length: 2\r\n\r\nok")
    assert idle.startswith(b"HTTP/1.1 200 ") and idle.count(b"HTTP/1.1") == 1   # answered, then closed when idle
    stalled = await converse(b"POST /s HTTP/1.1\r\nHost: sink\r\nContent-Length: 10\r\n\r\nonly")
    assert stalled.startswith(b"HTTP/1.1 408 ") and b"slow client" in stalled


async def test_a_request_answered_before_its_body_was_read_keeps_the_connection_usable(wp):
    """A 400 for the path (an answer before the body is wanted): the body that came with it
    is dropped, and the next request, already sent behind it (pipelined), is served."""
    port = await wp.bridge("10.96.0.40:80")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST /a%2Fb HTTP/1.1\r\nHost: sink\r\nContent-Length: 5\r\n\r\nhello"
                              b"POST /ok HTTP/1.1\r\nHost: sink\r\nContent-Length: 2\r\n\r\nhi")
        got, want = b"", hashlib.sha256(b"hi").hexdigest().encode()
        with trio.fail_after(20):   # a bound for a broken waypoint, not a measurement
            while want not in got:   # the second answer's body (head and body come in two writes)
                got += await stream.receive_some(65536)
    first, _, second = got.partition(b"HTTP/1.1 200 ")
    assert first.startswith(b"HTTP/1.1 400 ") and want in second
