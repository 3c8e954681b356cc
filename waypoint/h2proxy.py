"""HTTP/2 on both sides of the waypoint (gRPC included).

Client side (`serve_http2`): one reader task drives the HTTP2Server adapter; each stream
runs through the pipeline in its own task from its HEADERS on, its DATA going to that task
through a channel (acknowledged to the client only when the pipeline reads it: the
client's window is the bound); writes share a lock. A stream the client resets cancels its
task; the adapter's own guards (rapid reset, CONTINUATION, header list size) end only that
connection.

Backend side (`Backend2`): one multiplexed HTTP/2 connection (prior knowledge) per
endpoint, kept while it is usable; each request is a stream whose events a reader task
routes to that stream's channel. A request body still coming is pumped by the pipeline
(`send_data`), pausing while more than SEND_BUFFER bytes wait for the backend's window, so
streaming RPCs in both directions are carried.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import trio
from hyperframe.frame import GoAwayFrame

from .body import BodyError, RequestBody
from .http.events import ConnectionClosed, Data, EndOfMessage, ProtocolError, Request, Response, StreamReset
from .http.h2 import HTTP2Client
from .tunnelio import io_for

log = logging.getLogger("trellis.waypoint.h2")
READ_SIZE = 65536
SEND_BUFFER = 256 * 1024     # body bytes queued for a peer's stream window before the sender waits
ACK_FLUSH = 1024 * 1024     # response bytes read from a backend stream between two flushes of our output
BODY_IDLE_TIMEOUT = 30.0     # between two DATA frames of a request body (a stalled client)


class _H2Body:
    """One stream's request DATA as the reader task hands it over (body.Source)."""

    def __init__(self, h2, sid: int, receive: trio.MemoryReceiveChannel, flush):
        self.h2, self.sid, self.receive, self.flush = h2, sid, receive, flush

    def _convert(self, ev):
        if isinstance(ev, Data):
            self.h2.ack(self.sid, len(ev.data))   # read now: the client may send as much again
            return ev.data
        if isinstance(ev, EndOfMessage):
            return ev
        raise BodyError(400, "the client reset the stream or closed the connection mid-request")

    def poll(self):
        try:
            return self._convert(self.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    async def read(self):
        await self.flush()   # the WINDOW_UPDATEs of what was read so far, or the client may wait forever
        with trio.move_on_after(BODY_IDLE_TIMEOUT):
            try:
                return self._convert(await self.receive.receive())
            except trio.EndOfChannel:
                raise BodyError(400, "the client closed the connection mid-request") from None
        raise BodyError(408, f"request body stalled for {BODY_IDLE_TIMEOUT:g}s (slow client)")

    async def begin(self) -> None:
        pass
# RFC 9113 6.8's shutdown notice: GOAWAY NO_ERROR with the largest stream id, so the client
# opens no new stream here (it reconnects) while the streams it has open finish. Framed by
# hand: h2's close_connection() would close our side too, failing those streams.
GOAWAY_NOTICE = GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=0).serialize()


async def serve_http2(conn, idle_timeout: float) -> None:
    """`conn`: a waypoint.conn.ClientConnection whose protocol was detected as HTTP/2."""
    sc, stream = conn.sc, conn.io   # io_for(conn.stream): writes without a needless checkpoint
    h2 = sc.http
    lock = trio.Lock()
    bodies: dict[int, trio.MemorySendChannel] = {}   # streams whose request body is still coming
    running: dict[int, trio.CancelScope] = {}
    # set after each batch read from the client (its WINDOW_UPDATEs): a stream whose response
    # data waits for the client's window pauses on it, so the relay stops reading the backend
    progress = [trio.Event()]
    answered = trio.Event()   # a stream has been handled

    async def write(data: bytes = b"") -> None:
        # h2's output is taken under the lock: bytes taken before it could otherwise leave
        # after another task's later frames (a SETTINGS after a HEADERS: a broken connection);
        # `data` (the GOAWAY notice) goes after it: our preface SETTINGS must come first
        async with lock:
            data = sc.data_to_send() + data
            if data:
                await stream.send_all(data)

    async def handle(sid: int, req: Request, body: RequestBody) -> None:
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
            while isinstance(ev, Data) and h2.queued(sid) > SEND_BUFFER and h2.failed is None:
                await progress[0].wait()
        with trio.CancelScope() as scope:
            running[sid] = scope
            try:
                await conn.pipeline.handle(req, body, conn.caller, conn.target, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                running.pop(sid, None)
                answered.set()

    def dispatch(events, nursery) -> bool:
        """Route the adapter's events; True when the connection is over."""
        done = False
        for ev in events:
            if isinstance(ev, Request):
                send_ch, receive_ch = trio.open_memory_channel(math.inf)   # bounded by our window
                bodies[ev.stream_id] = send_ch
                length = ev.header("content-length")
                body = RequestBody(_H2Body(h2, ev.stream_id, receive_ch, write),
                                   int(length) if length and length.isdigit() else None)
                nursery.start_soon(handle, ev.stream_id, ev, body)
            elif isinstance(ev, (Data, EndOfMessage)) and ev.stream_id in bodies:
                bodies[ev.stream_id].send_nowait(ev)
                if isinstance(ev, EndOfMessage):
                    bodies.pop(ev.stream_id).close()
            elif isinstance(ev, StreamReset):
                ch = bodies.pop(ev.stream_id, None)
                if ch is not None:
                    ch.close()
                if ev.stream_id in running:
                    running[ev.stream_id].cancel()
            elif isinstance(ev, (ConnectionClosed, ProtocolError)):
                done = done or isinstance(ev, ConnectionClosed) or ev.stream_id in (0, 1) or h2.failed is not None
        return done

    async def goaway_when_draining() -> None:
        if conn.draining.is_set():
            # accepted during the drain grace (the caller's ztunnel still sends here): its
            # first request is served before the notice, as Envoy's drain does, or a client
            # that reconnects on GOAWAY would only come back here until the config moves it
            await answered.wait()
        await conn.draining.wait()
        try:
            await write(GOAWAY_NOTICE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        if conn.draining is not None:
            nursery.start_soon(goaway_when_draining)
        try:
            # what came with the bytes that settled detection (curl sends its request at once)
            done = dispatch(list(conn.events), nursery)
            conn.events.clear()
            await write()
            while not done:
                with trio.move_on_after(idle_timeout if not running else math.inf) as idle:
                    data = await stream.receive_some(READ_SIZE)
                if idle.cancelled_caught or not data:
                    break
                sc.receive_data(data)
                done = dispatch(sc.events(), nursery)
                await write()
                progress[0].set()
                progress[0] = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            for ch in bodies.values():
                ch.close()
            progress[0].set()
            nursery.cancel_scope.cancel()


class Backend2:
    """One multiplexed HTTP/2 connection to an endpoint."""

    def __init__(self, stream: trio.abc.Stream, endpoint):
        self.stream, self.endpoint = stream, endpoint
        self.io = io_for(stream)
        self.h2 = HTTP2Client()
        self.lock = trio.Lock()
        self.channels: dict[int, trio.MemorySendChannel] = {}
        self.broken: str | None = None
        self.progress = trio.Event()   # set after each batch from the backend (window updates): pumps wait on it

    @property
    def usable(self) -> bool:
        return self.broken is None and self.h2.keep_alive and len(self.channels) < 100

    async def run(self) -> None:
        """The reader: route each event to its stream's channel; fail every stream at the end."""
        try:
            await self._write()
            while True:
                data = await self.io.receive_some(READ_SIZE)
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
                self.progress.set()
                self.progress = trio.Event()
                if self.broken:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = f"backend connection lost: {exc}"
        finally:
            self.broken = self.broken or "closed"
            self.progress.set()
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
                await self.io.send_all(data)

    async def request(self, req: Request, body: RequestBody, spawn=None) -> "Exchange2":
        """A new stream: the head, with the body when it is all here; else `spawn(exchange)` pumps it."""
        send, receive = trio.open_memory_channel(math.inf)
        async with self.lock:
            sid = self.h2.next_stream_id()
            self.channels[sid] = send
            out = self.h2.send(dataclasses.replace(req, stream_id=sid))
            if body.complete:
                data = body.whole()
                if data:
                    out += self.h2.send(Data(data, sid))
                out += self.h2.send(EndOfMessage(body.trailers, stream_id=sid))
            await self.io.send_all(out)
        x = Exchange2(self, sid, receive)
        if not body.complete:
            spawn(x)
        return x


class Exchange2:
    def __init__(self, conn: Backend2, sid: int, receive: trio.MemoryReceiveChannel):
        self.conn, self.sid, self.receive = conn, sid, receive
        self.finished = False
        self.broken = False
        self.pump_scope = trio.CancelScope()
        self.acked = 0   # response bytes acknowledged since the last flush

    async def send_data(self, data: bytes) -> None:
        conn = self.conn
        if conn.broken or self.sid not in conn.channels:
            raise trio.ClosedResourceError(f"backend stream {self.sid} is over")
        async with conn.lock:
            out = conn.h2.send(Data(data, self.sid)) + conn.h2.data_to_send()
            await conn.io.send_all(out)
        while conn.h2.queued(self.sid) > SEND_BUFFER and not conn.broken:   # backpressure: the backend's window
            await conn.progress.wait()

    async def send_end(self, trailers) -> None:
        if self.conn.broken or self.sid not in self.conn.channels:
            raise trio.ClosedResourceError(f"backend stream {self.sid} is over")
        async with self.conn.lock:   # framed under the lock: see serve_http2's write
            await self.conn.io.send_all(self.conn.h2.send(EndOfMessage(trailers, self.sid)))

    async def next_event(self):
        """The next event of this stream; None when the connection failed under it."""
        ev = await self.receive.receive()
        if isinstance(ev, Data):
            self.conn.h2.ack(self.sid, len(ev.data))
            self.acked += len(ev.data)
            if self.acked >= ACK_FLUSH:   # h2 emits WINDOW_UPDATE past half the window: send it, or a
                self.acked = 0            # backend out of window waits for a frame nobody writes
                try:
                    await self.conn._write()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass   # the reader sees the connection go
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
        self.pump_scope.cancel()
        if not self.finished and self.conn.broken is None and self.sid in self.conn.channels:
            self.conn.channels.pop(self.sid, None)
            try:
                await self.conn._write(self.conn.h2.send(StreamReset(self.sid, 0x8)))   # CANCEL
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
