"""The sans-IO HTTP adapters behind a small trio loop on loopback, spoken to by real clients:
curl (HTTP/1.1 keep-alive and HTTP/2 prior knowledge), h2load, and raw sockets for the
smuggling and oversized-header refusals while another client keeps getting 200s."""
import functools
import socket
import subprocess

import trio

from waypoint.http.events import ConnectionClosed, EndOfMessage, ProtocolError, Request, StreamReset, simple_response
from waypoint.http.serverconn import L4, Detected, ServerConnection


async def serve_one(stream: trio.SocketStream) -> None:
    # No sniffing timeout here: every client of these tests speaks first, and a timer would
    # race the client's first write. Under CPU load curl once stayed silent for longer than
    # the 0.5 s this loop used to allow, was taken for a server-first L4 peer and hung up on,
    # and failed with error 55 writing its request. The timeout itself is tested with a
    # clock in test_detect.py (and conn.py waits SNIFF_WAIT before deciding).
    conn = ServerConnection()
    requests: dict[int, Request] = {}
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if conn.protocol == L4:                     # a plain-TCP peer: echo until it half-closes
                if not data:
                    return
                await stream.send_all(data)
                continue
            conn.receive_data(data)
            out = conn.data_to_send()
            for ev in conn.events():
                if isinstance(ev, Detected) and ev.protocol == L4:
                    out += b"L4:" + ev.initial
                elif isinstance(ev, Request):
                    requests[ev.stream_id] = ev
                elif isinstance(ev, EndOfMessage) and ev.stream_id in requests:
                    req = requests.pop(ev.stream_id)
                    body = f"{req.method} {req.target} HTTP/{req.http_version} host={req.host}"
                    for part in simple_response(200, body, stream_id=req.stream_id):
                        out += conn.send(part)
                elif isinstance(ev, ProtocolError):
                    await stream.send_all(out + conn.refusal(ev))
                    return
                elif isinstance(ev, (ConnectionClosed,)):
                    await stream.send_all(out)
                    return
                elif isinstance(ev, StreamReset):
                    requests.pop(ev.stream_id, None)
            if out:
                await stream.send_all(out)
            if not data:
                return


async def start_server(nursery) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def run(*argv) -> subprocess.CompletedProcess:
    return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)


async def test_curl_http1_keep_alive_and_http2_prior_knowledge():
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        url = f"http://127.0.0.1:{port}"
        r = await run("curl", "-sS", "-m", "5", f"{url}/a?x=1", f"{url}/b", "-w", " [%{num_connects}]\n")
        assert r.returncode == 0, r.stderr
        # The second transfer made no new connection: keep-alive works.
        assert r.stdout.decode() == ("GET /a?x=1 HTTP/1.1 host=127.0.0.1\n [1]\n"
                                     "GET /b HTTP/1.1 host=127.0.0.1\n [0]\n")
        r = await run("curl", "-sS", "-m", "5", "--http2-prior-knowledge", "-d", "payload", f"{url}/h2")
        assert r.returncode == 0 and r.stdout.decode() == "POST /h2 HTTP/2 host=127.0.0.1\n", r
        r = await run("h2load", "-n", "200", "-c", "2", "-m", "10", f"{url}/load")
        assert r.returncode == 0 and b"200 succeeded, 0 failed" in r.stdout, r.stdout
        nursery.cancel_scope.cancel()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)   # the echo server's cue that the L4 peer is done
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


async def test_smuggling_and_oversized_headers_refused_while_others_are_served():
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        smuggle = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
        got = await trio.to_thread.run_sync(_exchange, port, smuggle)
        assert got.startswith(b"HTTP/1.1 400 ") and b"request smuggling" in got and b"/admin" not in got
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        got = await trio.to_thread.run_sync(_exchange, port, big)
        assert got.startswith(b"HTTP/1.1 431 ")
        r = await run("curl", "-sS", "-m", "5", f"http://127.0.0.1:{port}/still")
        assert r.stdout.decode() == "GET /still HTTP/1.1 host=127.0.0.1\n"
        got = await trio.to_thread.run_sync(_exchange, port, b"\x16\x03\x01hello")
        assert got == b"L4:\x16\x03\x01hello"
        nursery.cancel_scope.cancel()
