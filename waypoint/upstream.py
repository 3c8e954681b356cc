"""Connections from the waypoint to backends, and one HTTP/1.1 exchange on them.

- Mesh endpoints: one HBONE tunnel per HTTP/1.1 connection, through the shared
  `HboneClientPool` (one mTLS HTTP/2 connection per destination ztunnel carries many
  tunnels): address `<endpoint IP>:<ports.HBONE>`, authority `<endpoint IP>:<targetPort>`, the
  endpoint workload's identity expected, the waypoint's own identity presented.
- Endpoints outside the mesh: plaintext TCP.
- HTTP keep-alive: a finished exchange whose connection may be reused goes back to a small
  per-endpoint idle list (LIFO, at most IDLE_PER_ENDPOINT, dropped after IDLE_TIMEOUT).

Failures are classified for retries: the connection could not be made (CONNECT_FAILURE),
or the backend closed/reset before any response byte (RESET_BEFORE_RESPONSE; a reused
idle connection the backend had just closed counts the same, as in Envoy).
"""
from __future__ import annotations

import logging
from collections import deque
import time
from typing import Callable

import trio

from meshcore import ports
import h2.exceptions

from meshcore.hbone import HboneClientPool, HboneError

from .body import RequestBody
from .filters.retry import CONNECT_FAILURE, RESET_BEFORE_RESPONSE
from .h2proxy import Backend2, Exchange2
from .http.events import Data, EndOfMessage, ProtocolError, Request, Response, StreamReset
from .http.h1 import HTTP1Client
from .tunnelio import io_for
from .view import Endpoint

log = logging.getLogger("trellis.waypoint.upstream")
IDLE_PER_ENDPOINT = 16
IDLE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
READ_SIZE = 65536
# what a request-body pump meets when the backend stops reading or goes away
PUMP_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HboneError, h2.exceptions.ProtocolError)


class AttemptFailed(Exception):
    def __init__(self, failure: str, message: str):
        super().__init__(message)
        self.failure = failure


class Backend1:
    """One HTTP/1.1 connection to an endpoint (over an HBONE tunnel or TCP)."""

    def __init__(self, stream: trio.abc.Stream, endpoint: Endpoint, reused: bool = False):
        self.stream, self.endpoint = stream, endpoint
        self.io = io_for(stream)
        self.h1 = HTTP1Client()
        self.idle_since = 0.0
        self.reused = reused
        self.broken = False
        self._pending: deque = deque()
        self._eof = False
        self.pump_scope = trio.CancelScope()

    async def send_request(self, req: Request, body: RequestBody, spawn) -> None:
        """The head, with the body when it is all here; else `spawn(self)` starts its pump."""
        self.pump_scope = trio.CancelScope()
        if req.http_version == "2":
            req = _as_http1(req, body)
        out = self.h1.send(req)
        if body.complete:
            data = body.whole()
            if data:
                out += self.h1.send(Data(data))
            await self.io.send_all(out + self.h1.send(EndOfMessage(body.trailers)))
        else:
            await self.io.send_all(out)
            spawn(self)

    async def send_data(self, data: bytes) -> None:
        await self.io.send_all(self.h1.send(Data(data)))

    async def send_end(self, trailers) -> None:
        await self.io.send_all(self.h1.send(EndOfMessage(trailers)))

    async def next_event(self):
        """The next event from the backend (reading only when none is buffered); None at EOF."""
        while not self._pending:
            if self._eof:
                return None
            data = await self.io.receive_some(READ_SIZE)
            self._eof = not data
            self.h1.receive_data(data)
            self._pending.extend(self.h1.events())
        return self._pending.popleft()

    async def events(self):
        """The response's events after the head: Data..., EndOfMessage."""
        while True:
            ev = await self.next_event()
            if ev is None or isinstance(ev, ProtocolError):
                self.broken = True
                raise trio.BrokenResourceError(ev.message if ev else "backend closed the connection mid-response")
            yield ev
            if isinstance(ev, EndOfMessage):
                return

    def buffered(self) -> bool:
        """Events already read and not yet taken (no I/O needed for the next one)."""
        return bool(self._pending)

    @property
    def reusable(self) -> bool:
        return not self.broken and self.h1.keep_alive and self.h1.idle

    async def aclose(self) -> None:
        self.pump_scope.cancel()
        await trio.aclose_forcefully(self.stream)


class Upstream:
    def __init__(self, hbone: HboneClientPool | None, own_identity: str | None,
                 clock: Callable[[], float] = time.monotonic):
        self.hbone, self.own_identity, self.clock = hbone, own_identity, clock
        self.hbone_port = ports.HBONE   # destination ztunnels listen here (tests move it)
        self.idle: dict[Endpoint, list[Backend1]] = {}
        self.h2conns: dict[Endpoint, Backend2] = {}
        self.nursery: trio.Nursery | None = None   # runs the HTTP/2 connections' readers (set by the app)
        self.opened = 0
        self.stale = 0   # reused idle connections found closed by the backend (replaced, not retried)

    async def _open(self, ep: Endpoint) -> trio.abc.Stream:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if ep.identity is not None and self.hbone is not None:
                    return await self.hbone.connect((ep.address, self.hbone_port), f"{_host(ep.address)}:{ep.port}",
                                                    ep.identity, self.own_identity or "")
                return await trio.open_tcp_stream(ep.address, ep.port)
        except trio.TooSlowError:
            raise AttemptFailed(CONNECT_FAILURE, f"connecting to {ep} timed out after {CONNECT_TIMEOUT:g}s") from None
        except (OSError, HboneError, trio.BrokenResourceError) as exc:
            raise AttemptFailed(CONNECT_FAILURE, f"cannot connect to {ep}: {exc}") from None

    async def connection(self, ep: Endpoint) -> Backend1:
        idle = self.idle.get(ep)
        now = self.clock()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_TIMEOUT:
                conn.reused = True
                return conn
            await conn.aclose()
        self.opened += 1
        return Backend1(await self._open(ep), ep)

    async def start2(self, ep: Endpoint, req: Request, body: RequestBody, spawn=None) -> tuple[Exchange2, Response]:
        """HTTP/2 (the client spoke it): a stream on the endpoint's multiplexed connection."""
        conn = self.h2conns.get(ep)
        if conn is None or not conn.usable:
            conn = self.h2conns[ep] = Backend2(await self._open(ep), ep)
            self.opened += 1
            assert self.nursery is not None, "Upstream.nursery must be set before HTTP/2 is proxied"
            self.nursery.start_soon(conn.run)
        try:
            x = await conn.request(req, body, spawn)
            while True:
                ev = await x.next_event()
                if ev is None or isinstance(ev, StreamReset):
                    raise AttemptFailed(RESET_BEFORE_RESPONSE, f"{ep} reset the stream before any response")
                if isinstance(ev, Response) and ev.status >= 200:
                    return x, ev
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HboneError) as exc:
            conn.broken = conn.broken or str(exc)
            raise AttemptFailed(RESET_BEFORE_RESPONSE, f"{ep} reset the connection before any response: {exc}") from None

    async def release(self, conn) -> None:
        if isinstance(conn, Exchange2):
            return
        if not conn.reusable:
            await conn.aclose()
            return
        idle = self.idle.setdefault(conn.endpoint, [])
        if len(idle) >= IDLE_PER_ENDPOINT:
            await conn.aclose()
            return
        conn.idle_since = self.clock()
        idle.append(conn)

    def start(self, ep: Endpoint, req: Request, body: RequestBody, spawn=None):
        """One attempt: the exchange and its response head, in the HTTP version the endpoint's
        Service port declares (`Endpoint.http_version`), else in the client's (Istio's
        protocol selection: an HTTP/2 client reaches an `http` port over HTTP/1.1, an
        HTTP/1.1 client a `grpc`/`http2`/`kubernetes.io/h2c` port over h2c)."""
        if (ep.http_version or req.http_version) == "2":
            return self.start2(ep, req, body, spawn)
        return self.start1(ep, req, body, spawn)

    async def start1(self, ep: Endpoint, req: Request, body: RequestBody, spawn=None) -> tuple[Backend1, Response]:
        """HTTP/1.1: open (or reuse) a connection, send the request, return the response head. A reused
        idle connection the backend had closed meanwhile (a race every keep-alive proxy has)
        is replaced by a fresh one at once: that is no failure of the endpoint's."""
        conn = await self.connection(ep)
        try:
            return conn, await self._exchange(conn, req, body, spawn)
        except AttemptFailed:
            if not conn.reused or not body.replayable:
                raise
            self.stale += 1
        conn = Backend1(await self._open(ep), ep)
        self.opened += 1
        return conn, await self._exchange(conn, req, body, spawn)

    async def _exchange(self, conn: Backend1, req: Request, body: RequestBody, spawn) -> Response:
        ep = conn.endpoint
        try:
            await conn.send_request(req, body, spawn)
            while True:
                ev = await conn.next_event()
                if ev is None:
                    raise AttemptFailed(RESET_BEFORE_RESPONSE, f"{ep} closed the connection before any response")
                if isinstance(ev, ProtocolError):
                    raise AttemptFailed(RESET_BEFORE_RESPONSE, f"{ep}: {ev.message}")
                if isinstance(ev, Response) and ev.status >= 200:
                    return ev
        except AttemptFailed:
            await conn.aclose()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HboneError) as exc:
            await conn.aclose()
            raise AttemptFailed(RESET_BEFORE_RESPONSE, f"{ep} reset the connection before any response: {exc}") from None
        except BaseException:
            await conn.aclose()
            raise

    def dump(self) -> dict:
        return {"opened": self.opened, "stale": self.stale, "idle": {str(ep): len(v) for ep, v in self.idle.items() if v},
                "http2": {str(ep): {"streams": len(c.channels), "broken": c.broken} for ep, c in self.h2conns.items()}}


def _as_http1(req: Request, body: RequestBody) -> Request:
    """An HTTP/2 client's request as HTTP/1.1 carries it: its cookie fields in one (RFC 9113
    8.2.3) and, for a body of unknown length still coming, chunked framing."""
    headers = req.headers
    cookies = [v for k, v in headers if k == "cookie"]
    if len(cookies) > 1:
        headers = tuple(h for h in headers if h[0] != "cookie") + (("cookie", "; ".join(cookies)),)
    if not body.complete and not any(k in ("content-length", "transfer-encoding") for k, _ in headers):
        headers += (("transfer-encoding", "chunked"),)
    return req.with_(headers=headers)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
