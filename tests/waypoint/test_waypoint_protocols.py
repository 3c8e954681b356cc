"""The waypoint speaks to a backend the protocol its Service port declares (Istio's protocol
selection), whatever the client spoke: real curl over HBONE in, a real HTTP/1.1-only
backend (the stdlib server answers an HTTP/2 preface with 400) and an h2c-only backend
(prior knowledge, the waypoint's own adapter: HTTP/1.1 bytes are a connection error to
it) behind the destination ztunnel.

- port named `http`: HTTP/1.1 upstream, so an HTTP/2 client reaches an HTTP/1.1-only app;
- `appProtocol: kubernetes.io/h2c` (it wins over the name `http`) or a name `http2-...`:
  h2c upstream, so an HTTP/1.1 client reaches an h2c-only app;
- undeclared (`web`): the client's protocol (Istio's for sniffed ports)."""
from __future__ import annotations

import http.server
import subprocess
import threading

import pytest
import trio

from waypoint.http.events import Data, EndOfMessage, Request, Response
from wp_process import NAMESPACE, acurl, h2_backend, mesh, service, workload

H1, H2 = "127.0.0.51", "127.0.0.52"


class H1Handler(http.server.BaseHTTPRequestHandler):
    """Answers `h1 METHOD PATH VERSION BODYLEN` (a chunked body read as chunked)."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _answer(self):
        body = self._body()
        self.server.seen.append((self.request_version, dict(self.headers), body))
        out = f"h1 {self.command} {self.path} {self.request_version} {len(body)}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *a):
        pass


async def h2c_backend(nursery) -> int:
    """Prior-knowledge HTTP/2 only: answers `h2 METHOD PATH BODYLEN`, without content-length
    (an HTTP/1.1 client then gets it chunked)."""
    def connection():
        sizes: dict[int, int] = {}
        heads: dict[int, Request] = {}

        def answer(h2, events) -> bytes:
            out = b""
            for ev in events:
                if isinstance(ev, Request):
                    heads[ev.stream_id], sizes[ev.stream_id] = ev, 0
                elif isinstance(ev, Data) and ev.stream_id in sizes:
                    sizes[ev.stream_id] += len(ev.data)
                    h2.ack(ev.stream_id, len(ev.data))
                elif isinstance(ev, EndOfMessage) and ev.stream_id in heads:
                    req = heads.pop(ev.stream_id)
                    text = f"h2 {req.method} {req.target} {sizes.pop(ev.stream_id)}\n".encode()
                    out += h2.send(Response(200, (("content-type", "text/plain"),), stream_id=ev.stream_id))
                    out += h2.send(Data(text, ev.stream_id)) + h2.send(EndOfMessage(stream_id=ev.stream_id))
            return out
        return answer
    return await h2_backend(nursery, H2, connection)


@pytest.fixture
async def wp(tmp_path):
    srv = http.server.ThreadingHTTPServer((H1, 0), H1Handler)
    srv.daemon_threads, srv.seen = True, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    h1 = srv.server_address[1]
    async with mesh(tmp_path) as m:
        h2 = await h2c_backend(m.nursery)
        text = (NAMESPACE + workload("h1", H1, "h1") + workload("h2", H2, "h2")
                + service("h1-http", "10.96.0.50", h1, "h1")                              # declared HTTP
                + service("h1-web", "10.96.0.51", h1, "h1", port_name="web")              # undeclared
                + service("h2-app", "10.96.0.52", h2, "h2", app_protocol="kubernetes.io/h2c")   # name http
                + service("h2-name", "10.96.0.53", h2, "h2", port_name="http2-api")
                + service("h2-web", "10.96.0.54", h2, "h2", port_name="web"))
        await m.start(text, [H1, H2])
        m.h1 = srv
        yield m
    srv.shutdown()


async def test_an_http2_client_reaches_an_http1_only_backend_on_an_http_port(wp, tmp_path):
    port = await wp.bridge("10.96.0.50:80")
    out = await acurl("--http2-prior-knowledge", "-w", " %{http_version} %{http_code}", f"http://127.0.0.1:{port}/x")
    assert out.stdout == "h1 GET /x HTTP/1.1 0\n 2 200", out.stderr
    # a body of unknown length (no content-length over HTTP/2): chunked to the HTTP/1.1 backend
    path = tmp_path / "up"
    path.write_bytes(b"z" * 300_000)
    with open(path, "rb") as stdin:
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["curl", "-s", "--max-time", "20", "--http2-prior-knowledge", "-T", "-", f"http://127.0.0.1:{port}/up"],
            stdin=stdin, capture_output=True, text=True, timeout=60))
    assert out.stdout == "h1 PUT /up HTTP/1.1 300000\n", out.stderr
    _, headers, body = wp.h1.seen[-1]
    assert headers.get("transfer-encoding") == "chunked" and body == b"z" * 300_000
    assert headers.get("host") == f"127.0.0.1:{port}"   # :authority became Host


async def test_an_http1_client_reaches_an_h2c_backend_the_port_declares(wp, tmp_path):
    for vip in ("10.96.0.52", "10.96.0.53"):   # appProtocol kubernetes.io/h2c (name http), name http2-api
        port = await wp.bridge(f"{vip}:80")
        out = await acurl("-i", "--http1.1", "-d", "hello", f"http://127.0.0.1:{port}/y")
        head, _, body = out.stdout.partition("\n\n")   # text mode: CRLF read as LF
        assert head.startswith("HTTP/1.1 200") and body == "h2 POST /y 5\n", out
        assert "transfer-encoding: chunked" in head.lower()   # no length from the backend: chunked to the client
    # a chunked upload (no length) becomes DATA frames: HTTP/2 has no transfer-encoding
    body = tmp_path / "up"
    body.write_bytes(b"u" * 200_000)
    out = await acurl("--http1.1", "-H", "transfer-encoding: chunked", "--data-binary", f"@{body}",
                      f"http://127.0.0.1:{port}/c")
    assert out.stdout == "h2 POST /c 200000\n", out.stderr
    assert wp.waypoint.upstream.dump()["http2"]   # multiplexed connections, no HTTP/1.1 ones
    assert not any("127.0.0.52" in ep for ep in wp.waypoint.upstream.dump()["idle"])


async def test_an_undeclared_port_speaks_what_the_client_spoke(wp):
    port = await wp.bridge("10.96.0.54:80")   # h2c backend, port named web
    out = await acurl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/z")
    assert out.stdout == "h2 GET /z 0\n"
    port = await wp.bridge("10.96.0.51:80")   # HTTP/1.1 backend, port named web
    out = await acurl("--http1.1", f"http://127.0.0.1:{port}/z")
    assert out.stdout == "h1 GET /z HTTP/1.1 0\n"
    # an HTTP/2 client to the HTTP/1.1-only app on an undeclared port: h2 upstream, which it refuses
    out = await acurl("--http2-prior-knowledge", "-w", "%{http_code}", "-o", "/dev/null", f"http://127.0.0.1:{port}/z")
    assert out.stdout == "503"
    services = {s.key: s.dump() for s in wp.waypoint.view.state.services}
    assert services["default/h2-app"]["ports"][0]["declared"] == "HTTP2"
    assert services["default/h1-web"]["ports"][0]["declared"] is None


def test_an_http2_request_as_http1_carries_one_cookie_field_and_frames_a_streamed_body():
    from waypoint.body import RequestBody
    from waypoint.upstream import _as_http1

    class Pending:   # a client whose body is still coming
        def poll(self):
            return None

    req = Request("POST", "/p", "web", (("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")), http_version="2")
    out = _as_http1(req, RequestBody())   # complete (empty) body: no framing added
    assert out.headers == (("x", "y"), ("cookie", "a=1; b=2"))   # RFC 9113 8.2.3
    streamed = RequestBody(Pending())
    assert _as_http1(req.with_(headers=()), streamed).headers == (("transfer-encoding", "chunked"),)
    sized = req.with_(headers=(("content-length", "9"),))
    assert _as_http1(sized, streamed).headers == sized.headers


def test_the_view_gives_each_endpoint_the_http_version_its_service_port_declares():
    from meshcore.resources import parse_documents
    from waypoint.routing import Backend
    from waypoint.view import View
    text = (NAMESPACE + workload("app", "10.0.0.5", "app")
            + service("grpc", "10.96.0.60", 9000, "app", port_name="grpc")
            + service("plain", "10.96.0.61", 9001, "app")
            + service("web", "10.96.0.62", 9002, "app", port_name="web"))
    res = parse_documents(text, "view.yaml")
    assert res.errors == []
    view = View(res.resources, trust_domain="cluster.local", namespace="default", gateway="waypoint")
    versions = {name: [ep.http_version for ep in view.endpoints(Backend("default", name, 80))]
                for name in ("grpc", "plain", "web")}
    assert versions == {"grpc": ["2"], "plain": ["1.1"], "web": [None]}
    wl = view.state.workload_by_address("10.0.0.5")
    # a pod dialled directly: the port's protocol from the Service that targets it
    assert [view.endpoint_of(wl, p).http_version for p in (9000, 9001, 9002, 9999)] == ["2", "1.1", None, None]
