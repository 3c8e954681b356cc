"""HTTP/2 on both sides of the waypoint (gRPC included).

Client side (`serve_http2`): one reader task drives the HTTP2Server adapter; each stream
whose request is complete runs through the pipeline in its own task; writes share a lock.
A stream the client resets cancels its task; the adapter's own guards (rapid reset,
CONTINUATION, header list size) end only that connection.

Backend side (`Backend2`): one multiplexed HTTP/2 connection (prior knowledge) per
endpoint, kept while it is usable; each request is a stream whose events a reader task
routes to that stream's channel. Request bodies are whole (the pipeline keeps them for
retries), so streaming RPCs in both directions at once are not carried; unary and
server-streaming gRPC are.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import trio
from hyperframe.frame import GoAwayFrame

from .http.events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, StreamReset
from .http.h2 import HTTP2Client

log = logging.getLogger("trellis.waypoint.h2")
READ_SIZE = 65536
# RFC 9113 6.8's shutdown notice: GOAWAY NO_ERROR with the largest stream id, so the client
# opens no new stream here (it reconnects) while the streams it has open finish. Framed by
# hand: h2's close_connection() would close our side too, failing those streams.
GOAWAY_NOTICE = GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize()


async def serve_http2(conn, idle_timeout: float) -> None:
    """`conn`: a waypoint.conn.ClientConnection whose protocol was detected as HTTP/2."""
    from .pipeline import MAX_BODY
    sc, stream = conn.sc, conn.stream
    h2 = sc.http
    lock = trio.Lock()
    pending: dict[int, tuple[Request, list[bytes], int]] = {}
    running: dict[int, trio.CancelScope] = {}

    async def write(data: bytes = b"") -> None:
        # h2's output is taken under the lock: bytes taken before it could otherwise leave
        # after another task's later frames (a SETTINGS after a HEADERS: a broken connection)
        async with lock:
            data += sc.data_to_send()
            if data:
                await stream.send_all(data)

    async def handle(sid: int, req: Request, body: bytes) -> None:
        held: list[Response] = []

        async def send(ev, more: bool = False) -> None:
            ev = dataclasses.replace(ev, stream_id=sid)
            if isinstance(ev, Response) and more:
                held.append(ev)          # maybe a trailers-only answer: see what follows
                return
            async with lock:
                if held and isinstance(ev, EndOfMessage) and not ev.trailers:
                    data = h2.send_headers_only(held.pop()) + sc.data_to_send()
                else:
                    data = (sc.send(held.pop()) if held else b"") + sc.send(ev) + sc.data_to_send()
                if data:
                    await stream.send_all(data)
        with trio.CancelScope() as scope:
            running[sid] = scope
            try:
                await conn.pipeline.handle(req, body, conn.caller, conn.target, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                running.pop(sid, None)

    async def goaway_when_draining() -> None:
        await conn.draining.wait()
        try:
            await write(GOAWAY_NOTICE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        if conn.draining is not None:
            nursery.start_soon(goaway_when_draining)
        try:
            await write()
            # what arrived with the preface: a client that does not wait for our SETTINGS
            # (curl --http2-prior-knowledge) sends its first request in the same segment
            backlog = list(conn.events)
            conn.events.clear()
            while True:
                if backlog:
                    events, backlog = backlog, []
                else:
                    with trio.move_on_after(idle_timeout if not running else math.inf) as idle:
                        data = await stream.receive_some(READ_SIZE)
                    if idle.cancelled_caught or not data:
                        break
                    sc.receive_data(data)
                    events = sc.events()
                done = False
                for ev in events:
                    if isinstance(ev, Request):
                        pending[ev.stream_id] = (ev, [], 0)
                    elif isinstance(ev, Data) and ev.stream_id in pending:
                        req, chunks, size = pending[ev.stream_id]
                        h2.ack(ev.stream_id, len(ev.data))
                        if size + len(ev.data) > MAX_BODY:
                            pending.pop(ev.stream_id)
                            reset = sc.send(StreamReset(ev.stream_id, 0xb))   # ENHANCE_YOUR_CALM
                            await write(reset)   # a RST_STREAM: its place among other streams' frames is free
                            continue
                        chunks.append(ev.data)
                        pending[ev.stream_id] = (req, chunks, size + len(ev.data))
                    elif isinstance(ev, EndOfMessage) and ev.stream_id in pending:
                        req, chunks, _ = pending.pop(ev.stream_id)
                        nursery.start_soon(handle, ev.stream_id, req, b"".join(chunks))
                    elif isinstance(ev, StreamReset):
                        pending.pop(ev.stream_id, None)
                        if ev.stream_id in running:
                            running[ev.stream_id].cancel()
                    elif isinstance(ev, (ConnectionClosed, ProtocolError)):
                        done = isinstance(ev, ConnectionClosed) or ev.stream_id in (0, 1) or h2.failed is not None
                await write()
                if done:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            nursery.cancel_scope.cancel()


class Backend2:
    """One multiplexed HTTP/2 connection to an endpoint."""

    def __init__(self, stream: trio.abc.Stream, endpoint):
        self.stream, self.endpoint = stream, endpoint
        self.h2 = HTTP2Client()
        self.lock = trio.Lock()
        self.channels: dict[int, trio.MemorySendChannel] = {}
        self.broken: str | None = None

    @property
    def usable(self) -> bool:
        return self.broken is None and self.h2.keep_alive and len(self.channels) < 100

    async def run(self) -> None:
        """The reader: route each event to its stream's channel; fail every stream at the end."""
        try:
            await self._write()
            while True:
                data = await self.stream.receive_some(READ_SIZE)
                if not data:
                    self.broken = "backend closed the connection"
                    break
                self.h2.receive_data(data)
                for ev in self.h2.events():
                    if isinstance(ev, (ConnectionClosed, ProtocolError)) and getattr(ev, "stream_id", 0) in (0, 1):
                        self.broken = getattr(ev, "message", None) or getattr(ev, "reason", "GOAWAY")
                    ch = self.channels.get(getattr(ev, "stream_id", 0))
                    if ch is not None:
                        ch.send_nowait(ev)
                        if isinstance(ev, (EndOfMessage, StreamReset)):
                            self.channels.pop(ev.stream_id, None)
                await self._write()
                if self.broken:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = f"backend connection lost: {exc}"
        finally:
            self.broken = self.broken or "closed"
            log.info("waypoint: HTTP/2 connection to %s ended: %s (%d streams open)", self.endpoint, self.broken,
                     len(self.channels))
            for ch in self.channels.values():
                ch.send_nowait(None)
            self.channels.clear()
            await trio.aclose_forcefully(self.stream)

    async def _write(self, data: bytes = b"") -> None:
        """Write what h2 has queued, taken under the lock (see serve_http2's write)."""
        async with self.lock:
            data += self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def request(self, req: Request, body: bytes) -> "Exchange2":
        send, receive = trio.open_memory_channel(math.inf)
        async with self.lock:
            sid = self.h2.next_stream_id()
            self.channels[sid] = send
            out = self.h2.send(dataclasses.replace(req, stream_id=sid))
            if body:
                out += self.h2.send(Data(body, sid))
            out += self.h2.send(EndOfMessage(stream_id=sid))
            await self.stream.send_all(out)
        return Exchange2(self, sid, receive)


class Exchange2:
    def __init__(self, conn: Backend2, sid: int, receive: trio.MemoryReceiveChannel):
        self.conn, self.sid, self.receive = conn, sid, receive
        self.finished = False

    async def next_event(self):
        """The next event of this stream; None when the connection failed under it."""
        ev = await self.receive.receive()
        if isinstance(ev, Data):
            self.conn.h2.ack(self.sid, len(ev.data))
        return ev

    async def events(self):
        while True:
            ev = await self.next_event()
            if ev is None or isinstance(ev, StreamReset):
                raise trio.BrokenResourceError(f"backend stream {self.sid} reset")
            yield ev
            if isinstance(ev, EndOfMessage):
                self.finished = True
                return

    def buffered(self) -> bool:
        return self.receive.statistics().current_buffer_used > 0

    @property
    def reusable(self) -> bool:
        return self.finished

    async def aclose(self) -> None:
        if not self.finished and self.conn.broken is None and self.sid in self.conn.channels:
            self.conn.channels.pop(self.sid, None)
            try:
                await self.conn._write(self.conn.h2.send(StreamReset(self.sid, 0x8)))   # CANCEL
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
