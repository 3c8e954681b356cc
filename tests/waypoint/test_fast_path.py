"""The lean HTTP/1.1 path (waypoint/fast1.py) against the general pipeline: the same requests
over real sockets, once each way, must give the same bytes to the backend, the same answers
to the client, the same access-log fields and the same request and retry counters. Then
the cases only the lean path has code for: an attempt timeout on a kept-alive connection
(its alarm instead of a cancel scope) and a backend that closed that connection."""
from __future__ import annotations

import functools
import json
import logging
import re

import pytest
import trio

from waypoint import accesslog
from waypoint.alarms import ALARMS
from waypoint.app import Config, Waypoint
from waypoint.conn import ClientConnection
from waypoint.pipeline import Caller
from waypoint.view import Target
from wp_process import resources, route, service, workload

BACKEND = "127.0.0.41"


def config(port: int) -> str:
    return (service("web", "10.96.0.41", port, "web") + service("slow", "10.96.0.42", port, "web")
            + workload("web", BACKEND, "web")
            + route("web", "timeouts: {request: 5s, backendRequest: 2s}",
                    "retry: {attempts: 2, codes: [503], backoff: 10ms}")
            + route("slow", "timeouts: {request: 5s, backendRequest: 300ms}"))


class Backend:
    """A keep-alive HTTP/1.1 app on BACKEND: answers by path, records each request's bytes."""

    def __init__(self):
        self.seen: list[bytes] = []
        self.fail_next = 0        # answer 503 this many times
        self.close_after = False  # close each connection after its answer (no keep-alive)
        self.slow = False

    async def serve(self, stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.seen.append(head)
                if self.slow:
                    await trio.sleep(2)
                path = head.split(b" ")[1]
                if self.fail_next:
                    self.fail_next -= 1
                    status, body = b"503 Service Unavailable", b"down\n"
                elif path.startswith(b"/none"):
                    status, body = b"204 No Content", b""
                else:
                    status, body = b"200 OK", b"hello " + path + b"\n"
                length = b"" if status.startswith(b"204") else b"content-length: %d\r\n" % len(body)
                await stream.send_all(b"HTTP/1.1 " + status + b"\r\nx-app: web\r\nconnection: keep-alive\r\n"
                                      + length + b"\r\n" + (b"" if head.startswith(b"HEAD") else body))
                if self.close_after:
                    return


class Client:
    """One client connection into the waypoint (a socket pair; the waypoint's end served by a
    ClientConnection for `service`, as a tunnel's would be)."""

    def __init__(self, wp: Waypoint, nursery: trio.Nursery, service_name: str):
        a, b = trio.socket.socketpair()
        target = Target(wp.view.service("default", service_name), 80)
        cc = ClientConnection(trio.SocketStream(a), Caller(None, "127.0.0.9", security="none"), target, wp.pipeline)
        nursery.start_soon(cc.serve)
        self.stream, self.buf = trio.SocketStream(b), b""

    async def request(self, raw: bytes) -> bytes:
        await self.stream.send_all(raw)
        head_only = raw.startswith(b"HEAD")
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"content-length: (\d+)", self.buf[:end], re.I)
                size = 0 if head_only or m is None else int(m.group(1))
                if len(self.buf) >= end + 4 + size:
                    out, self.buf = self.buf[:end + 4 + size], self.buf[end + 4 + size:]
                    return out
            data = await self.stream.receive_some(65536)
            assert data, f"the waypoint closed the connection; so far {self.buf!r}"
            self.buf += data


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def access():
    cap = Capture()
    logger = accesslog.access_log
    level = logger.level
    logger.addHandler(cap)
    logger.setLevel(logging.INFO)
    yield cap
    logger.removeHandler(cap)
    logger.setLevel(level)


REQUESTS = [
    b"GET /a HTTP/1.1\r\nhost: web\r\n\r\n",
    b"GET /b?x=1 HTTP/1.1\r\nhost: web\r\nconnection: keep-alive, x-drop\r\nx-drop: 1\r\nte: trailers\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-keep: v\r\n\r\n",
    b"POST /c HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\n\r\n",
    b"HEAD /d HTTP/1.1\r\nhost: web\r\n\r\n",
    b"DELETE /none HTTP/1.1\r\nhost: web\r\n\r\n",
    b"GET /retried HTTP/1.1\r\nhost: web\r\n\r\n",    # 503 first, retried on a new connection
    b"GET /e HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
]


async def _run(lean: bool, access: Capture):
    app = Backend()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, app.serve, 0, host=BACKEND))
        wp = Waypoint(Config("default", "waypoint", standalone_listen=("127.0.0.1", 1)),
                      resources=resources(config(listeners[0].socket.getsockname()[1])))
        wp.upstream.nursery = nursery
        general = []
        handle = wp.pipeline.handle

        async def counted(*args):
            general.append(args[0].target)
            return await handle(*args)
        wp.pipeline.handle = counted
        if not lean:
            async def declined(cc, req):
                return None
            wp.pipeline.fast.handle = declined
        client = Client(wp, nursery, "web")
        answers = []
        for raw in REQUESTS:
            app.fail_next = 1 if b"/retried" in raw else 0
            answers.append(await client.request(raw))
        nursery.cancel_scope.cancel()
    metrics = sorted(line for line in wp.metrics.render().decode().splitlines()
                     if line.startswith(("istio_requests_total{", "trellis_waypoint_retries_total{",
                                         "istio_request_duration_milliseconds_count{")))
    tp = re.compile(rb"traceparent: 00-([0-9a-f]{32})-[0-9a-f]{16}-01")
    seen = [tp.sub(lambda m: b"traceparent: <%s>" % (b"kept" if m.group(1).startswith(b"4bf92f") else b"new"), h)
            for h in app.seen]
    # in order (the line's field order too); the clock, the span id and the backend's port aside
    logs = [[(k, v.rsplit(":", 1)[0] if k == "upstream" else v) for k, v in line.items()
             if k not in ("duration_ms", "traceparent")] for line in access.lines]
    access.lines.clear()
    return answers, seen, logs, metrics, general, wp


async def test_the_lean_path_does_what_the_pipeline_does(access):
    lean = await _run(True, access)
    general = await _run(False, access)
    for got, want in zip(lean[:4], general[:4]):
        assert got == want
    answers, seen, logs, metrics, used_general, wp = lean
    assert used_general == [] and len(general[4]) == len(REQUESTS)   # each path really served them
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3 + [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b"connection: close" in answers[-1]
    # hop-by-hop fields and what Connection names are dropped, te: trailers kept, the trace id kept
    second = seen[1].decode()
    assert "x-drop" not in second and "connection" not in second.lower() and "te: trailers" in second
    assert "traceparent: <kept>" in second and "x-keep: v" in second
    assert b"content-length: 0" in seen[2]
    logs = [dict(line) for line in logs]
    assert [line["status"] for line in logs] == [200, 200, 200, 200, 204, 200, 200]
    assert logs[5]["attempts"] == 2 and logs[0]["attempts"] == 1 and logs[0]["route"] == "HTTPRoute default/web"
    assert any('reason="status 503"' in m for m in metrics)


async def test_an_attempt_timeout_on_a_kept_alive_connection_and_a_closed_one(access):
    app = Backend()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, app.serve, 0, host=BACKEND))
        wp = Waypoint(Config("default", "waypoint", standalone_listen=("127.0.0.1", 1)),
                      resources=resources(config(listeners[0].socket.getsockname()[1])))
        client = Client(wp, nursery, "slow")
        assert (await client.request(b"GET /1 HTTP/1.1\r\nhost: slow\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert wp.upstream.opened == 1 and sum(map(len, wp.upstream.idle.values())) == 1
        app.slow = True   # the kept-alive connection's next answer takes 2 s: the 300 ms backendRequest ends it
        answer = await client.request(b"GET /2 HTTP/1.1\r\nhost: slow\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 504") and b"0.3s backendRequest timeout" in answer
        assert sum(map(len, wp.upstream.idle.values())) == 0   # the timed-out connection was closed, not kept
        assert trio.lowlevel.current_root_task() in ALARMS.runs   # by its alarm: no cancel scope on the lean path
        app.slow, app.close_after = False, True
        assert (await client.request(b"GET /3 HTTP/1.1\r\nhost: slow\r\n\r\n")).startswith(b"HTTP/1.1 200")
        # the backend closed its end after /3: the next request finds the idle connection dead and
        # is sent again at once on a new one, with no retry and no error for the client
        await trio.sleep(0.1)
        assert (await client.request(b"GET /4 HTTP/1.1\r\nhost: slow\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert wp.upstream.stale >= 1 and wp.upstream.opened == 3
        nursery.cancel_scope.cancel()
    assert [line["status"] for line in access.lines] == [200, 504, 200, 200]
    assert access.lines[1]["attempts"] == 1
