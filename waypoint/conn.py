"""One client connection into the waypoint (an HBONE tunnel, or a plaintext TCP connection in
standalone mode): detect the protocol, then serve HTTP/1.1 requests one after another
(keep-alive) through the pipeline, or forward the bytes as plain L4.

Timeouts against idle and slow clients: nothing for IDLE_TIMEOUT between requests closes
the connection; a request whose head and body take longer than REQUEST_READ_TIMEOUT to
arrive gets 408 and the connection closes. Protocol errors (smuggling, oversized headers)
are answered by the adapters' refusal and the connection closes; nothing here raises on a
client's bytes, so other clients are never affected.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque

import trio

from meshcore import authz

from .http.detect import HTTP1, HTTP2, L4
from .body import BodyError, RequestBody
from .http.events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, StreamReset
from .http.serverconn import Detected, ServerConnection
from .idlewatch import WATCH, Watched
from .h2proxy import serve_http2
from .pipeline import Caller, Pipeline
from .tunnelio import io_for
from .upstream import AttemptFailed
from .view import Target

log = logging.getLogger("trellis.waypoint.conn")
IDLE_TIMEOUT = 60.0
# How long a client may stay silent before the tunnel is taken for a server-first L4
# protocol. Longer than the adapter's SNIFF_TIMEOUT: on a busy node an HTTP client can be
# slower than 100 ms, and a client that waits on purpose gains nothing (L4 traffic is
# authorized with L4 semantics: a DENY with HTTP fields refuses it).
SNIFF_WAIT = 1.0
REQUEST_READ_TIMEOUT = 30.0   # for a request head, and between two reads of a request body
READ_SIZE = 65536


class ClientConnection:
    def __init__(self, stream: trio.abc.Stream, caller: Caller, target: Target, pipeline: Pipeline,
                 draining: trio.Event | None = None):
        self.stream, self.caller, self.target, self.pipeline = stream, caller, target, pipeline
        self.io = io_for(stream)
        self.draining = draining
        self.sc = ServerConnection()
        self.events: deque = deque()
        self.eof = False
        self.out = bytearray()   # response bytes held back to leave in one write
        # for fast1.FastPath, worked out once per snapshot: its View, the base labels, whether
        # requests here may take the lean path at all, the caller's namespace for routing
        self.fast_view = self.fast_base = None
        self.fast_ok, self.fast_src_ns = False, ""

    async def _fill(self) -> bool:
        """Read once more into the adapter; False at EOF."""
        if self.eof:
            return False
        data = await self.io.receive_some(READ_SIZE)
        self.eof = not data
        http = self.sc.http
        if http is not None:   # detected: straight to the adapter
            http.receive_data(data)
            self.events.extend(http.events())
        else:
            self.sc.receive_data(data)
            self.events.extend(self.sc.events())
        return not self.eof

    async def _next(self, timeout: float):
        """The next event; None when `timeout` passed first."""
        if self.events:   # already parsed: no cancel scope, no wait
            return self.events.popleft()
        if timeout == math.inf:
            return await self._wait_event()
        with trio.move_on_after(timeout):
            return await self._wait_event()
        return None   # timed out

    async def _wait_event(self):
        while not self.events:
            if not await self._fill():
                break
        return self.events.popleft() if self.events else ConnectionClosed("peer closed")

    async def serve(self) -> None:
        with trio.move_on_after(SNIFF_WAIT):   # a silent client: server-first L4 after a while
            while self.sc.protocol is None and await self._fill():
                pass
        if self.sc.protocol is None:
            self.sc.sniff_timeout()
            self.events.extend(self.sc.events())
        first = self.events.popleft() if self.events else None
        if not isinstance(first, Detected):
            return
        self.pipeline.metrics.tunnels.labels(first.protocol).inc()
        if first.protocol == L4:
            await self._forward_l4(first.initial)
        elif first.protocol == HTTP1:
            await self._serve_http1()
        elif first.protocol == HTTP2:
            await serve_http2(self, IDLE_TIMEOUT)

    async def _send_bytes(self, data: bytes) -> None:
        if data:
            await self.io.send_all(data)

    async def _send(self, ev, more: bool = False) -> None:
        if isinstance(ev, Response) and self.draining is not None and self.draining.is_set():
            # the waypoint is shutting down: this answer ends the keep-alive connection, so the
            # client's next request opens a new one (elsewhere) instead of meeting a closed
            # socket when the drain deadline cuts this one (Envoy's drain does the same)
            ev = dataclasses.replace(ev, headers=tuple(ev.headers) + (("connection", "close"),))
        self.out += self.sc.http.send(ev)
        if not more:
            out, self.out = bytes(self.out), bytearray()
            await self._send_bytes(out)

    async def _serve_http1(self) -> None:
        # one scope for the idle timeout, cancelled by the idle watch (no deadline moved per request)
        with trio.CancelScope() as scope:
            idle = WATCH.watch(scope, IDLE_TIMEOUT)
            try:
                await self._http1_loop(idle)
            finally:
                WATCH.forget(idle)

    async def _http1_loop(self, idle: Watched) -> None:
        while True:
            if self.events:
                ev = self.events.popleft()
            else:
                idle.idle_since = trio.current_time()
                ev = await self._next(math.inf)
                idle.idle_since = None
            if ev is None or isinstance(ev, (ConnectionClosed, StreamReset)):
                return
            if isinstance(ev, ProtocolError):
                await self._send_bytes(self.sc.refusal(ev))
                return
            if not isinstance(ev, Request):
                return
            events = self.events
            if not (events and type(events[0]) is EndOfMessage and not events[0].trailers
                    and (self.draining is None or not self.draining.is_set())
                    and await self.pipeline.fast.handle(self, ev) is not None):   # no body: the lean path first
                length = ev.header("content-length")
                body = RequestBody(_Http1Body(self), int(length) if length is not None else None)
                await self.pipeline.handle(ev, body, self.caller, self.target, self._send)
            if not self.sc.keep_alive:
                return
            while self.events and isinstance(self.events[0], (Data, EndOfMessage)):
                self.events.popleft()   # the rest of a body answered without being read (403, 404, 429...)
            self.events.extend(self.sc.http.events())   # a pipelined request parsed only now the exchange ended

    async def _forward_l4(self, initial: bytes) -> None:
        """Not HTTP: relay bytes to one endpoint of the Service. Authorization with L4 semantics
        (Istio's at a waypoint for TCP): an ALLOW rule with HTTP fields never matches, a DENY
        rule with HTTP fields always does, so L7 policy cannot be sidestepped by not speaking HTTP."""
        view = self.pipeline.view_of()
        t = self.target
        verdict = authz.evaluate(view.target_policies(t), self.caller.identity, t.port, None,
                                 source_ip=self.caller.address,
                                 destination_ip=t.workload.address if t.workload else t.service.cluster_ip)
        if isinstance(verdict, authz.Deny):
            self.pipeline.metrics.authz_denied.labels(t.service.key, verdict.policy or "").inc()
            log.info("waypoint: L4 tunnel from %s to %s refused: %s", self.caller.identity, t.service.key, verdict.reason)
            return
        if t.workload is not None:
            eps = [view.endpoint_of(t.workload, t.workload_port)]
        else:
            from .routing import Backend
            eps = view.endpoints(Backend(t.service.namespace, t.service.name, t.port))
        cluster = view.cluster(t.service.namespace, t.service.name)
        ep = cluster.pick(eps) if eps else None
        if ep is None:
            return
        try:
            up = await self.pipeline.upstream._open(ep)
        except AttemptFailed as exc:
            log.info("waypoint: L4 forward to %s failed: %s", ep, exc)
            return
        async with up:
            if initial:
                await up.send_all(initial)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, self.stream, up)
                nursery.start_soon(_pump, up, self.stream)


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(READ_SIZE):
            await dst.send_all(data)
        if hasattr(dst, "send_eof"):
            await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Http1Body:
    """The request body's events as they come off this connection (body.Source)."""

    def __init__(self, cc: ClientConnection):
        self.cc = cc

    def poll(self):
        return _convert(self.cc.events.popleft()) if self.cc.events else None

    async def read(self):
        ev = await self.cc._next(REQUEST_READ_TIMEOUT)
        if ev is None:
            raise BodyError(408, f"request body stalled for {REQUEST_READ_TIMEOUT:g}s (slow client)")
        return _convert(ev)

    async def begin(self) -> None:
        http = self.cc.sc.http
        if getattr(http, "expect_continue", False):   # RFC 9110 10.1.1: the client waits for it
            await self.cc._send(Response(100, reason="Continue"))


def _convert(ev):
    if isinstance(ev, Data):
        return ev.data
    if isinstance(ev, EndOfMessage):
        return ev
    if isinstance(ev, ProtocolError):
        raise BodyError(ev.status, ev.message)
    raise BodyError(400, "client closed the connection mid-request")
