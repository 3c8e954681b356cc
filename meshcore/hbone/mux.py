"""One multiplexed HBONE connection (`Mux`): the codec, the TLS socket, and the tasks that drive them.

A reader task feeds the sans-IO codec and routes events to per-stream state. A tunnel
relayed to a plain socket (`HboneStream.relay`) registers that socket, and the reader
writes DATA straight into it when the socket takes it (no task switch, the common case)
and half-closes it on END_STREAM. Only when the socket is full does a short-lived drain
task start (in the connection's nursery) to wait for it and finish the buffer; so an
idle relayed tunnel costs one task, the relay's own, parked.

The other direction, socket to tunnel: a poller task reads every idle relay's socket
from one edge-triggered epoll set per connection (`_poller`), frames what arrived and
writes the batch, so a request costs no wakeup of its relay's task; the relay task reads
only what needs waiting for (EOF, full windows, bulk transfers).

Output is one queue (`_out`) owned by the connection. Tunnel DATA is queued (`defer`)
and written by the writer task once per scheduler round, so the tunnels that had data
in the same round share one TLS record and one write(); control output (window updates,
resets, headers) is written at once by whoever produced it (`push`, `flush`) unless a
write is already in progress. Bytes stay queued until the TLS socket takes them, and the
ciphertext it could not write yet waits there (`pending`) until the writer finishes it,
so a task cancelled mid-write never tears a TLS record.
"""
from __future__ import annotations

import logging
import select
import socket
from typing import Awaitable, Callable

import trio
from trio.lowlevel import ParkingLot, notify_closing, wait_readable

from meshcore import sockio
from meshcore.tlssock import TlsSocket

from . import codec as c
from .errors import LocalProtocolError, RemoteProtocolError, describe_tls_failure

log = logging.getLogger("meshcore.hbone")
READ_SIZE = 256 * 1024
REFUSED_STREAM = 7   # RFC 9113 error code: the peer did not process the stream
DEFAULT_RECEIVE = 64 * 1024
HIGH_WATER = 256 * 1024   # queued output above which a sender waits for the socket
# A FIN or an error raises one edge, which a read of the bytes before it consumes.
_HANGUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class _StreamState:
    __slots__ = ("buf", "recv_ended", "send_ended", "reset_code", "response", "recv_lot", "sock", "sink_error",
                 "draining", "out_done", "taken", "sent", "polled", "edge", "hup", "handoff")

    def __init__(self) -> None:
        self.buf: list[bytes] = []   # received, not yet taken (a list: an idle deque costs 600 B)
        self.sock: socket.socket | None = None   # the relay's socket: DATA is written into it
        self.sink_error: OSError | None = None   # writing into `sock` failed (the app reset)
        self.draining = False    # a drain task is finishing `buf` into `sock`
        self.out_done = False    # END_STREAM reached `sock` as a half-close
        self.taken = 0          # bytes handed to the application (read or sunk)
        self.sent = 0           # bytes framed into the tunnel
        self.polled = False     # the relay is idle: the connection's poller reads `sock` for it
        self.edge = False       # `sock` became readable while the relay task was reading it
        self.hup = False        # the app's FIN (or an error) is queued behind the data: no more edges
        self.handoff: bytes | OSError | None = None   # what the poller read but could not send
        self.recv_ended = False
        self.send_ended = False
        self.reset_code: int | None = None
        self.response: c.TunnelOpened | c.TunnelRefused | None = None
        self.recv_lot = ParkingLot()


class Mux:
    """One HBONE connection: codec + transport + the tasks that drive them."""

    def __init__(self, transport: TlsSocket, codec: c.ClientConnection | c.ServerConnection,
                 peer: str, on_request: Callable[[c.TunnelRequested], None] | None = None) -> None:
        self.transport = transport
        self.codec = codec
        self.peer = peer
        self.streams: dict[int, _StreamState] = {}
        self.broken: str | None = None     # why the connection is unusable, once it is
        self.bytes_in = self.bytes_out = 0
        self._on_request = on_request
        self._out = bytearray()            # codec output not yet on the wire
        self._writing = False              # a task is between send_nowait and wait_writable
        self._queued = self._written = 0   # totals, so flush() knows when its bytes left
        self._flushed_lot = ParkingLot()
        self._kick = trio.Event()
        self._window_lot = ParkingLot()
        self._cancel = trio.CancelScope()
        self._server_side = isinstance(codec, c.ServerConnection)
        self._drained = False
        self._nursery: trio.Nursery | None = None   # the writer and the drain tasks
        self.drains_started = 0   # relayed streams whose socket filled up (a drain task ran)
        self.polled_reads = 0     # reads the poller framed itself, without the relay's task
        # Idle relays' sockets, edge-triggered: the poller reads them (see `watch`).
        self._ep = select.epoll()
        self._watched: dict[int, tuple[int, _StreamState]] = {}

    # ---- driving -----------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch until the connection ends; then wake every waiter."""
        with self._cancel:
            try:
                await self.flush()   # our preface and settings
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._guard, self._writer)
                    nursery.start_soon(self._guard, self._poller)
                    await self._guard(self._reader)
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._transport_failed(e)
        self._break(self.broken or f"connection to {self.peer} closed")
        self._watched.clear()
        notify_closing(self._ep)
        self._ep.close()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.transport)

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        # Caught here, inside the nursery: outside it would arrive as an ExceptionGroup.
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._transport_failed(e)

    def _transport_failed(self, e: BaseException) -> None:
        self._break(describe_tls_failure(e, self.peer, we_are_server=self._server_side)
                    if e.__cause__ is not None else f"connection to {self.peer} broke: {e or type(e).__name__}")

    async def _reader(self) -> None:
        while self.broken is None:
            data = await self.transport.receive_some(READ_SIZE)
            if not data:
                self._break(f"{self.peer} closed the connection")
                return
            self.bytes_in += len(data)
            try:
                events = self.codec.receive_data(data)
            except RemoteProtocolError as e:
                self._break(f"protocol error from {self.peer}: {e}")
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await self.flush()   # best effort: tell the peer why (GOAWAY)
                return
            for ev in events:
                self._dispatch(ev)
            self.push()

    async def _writer(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            await self.flush()
            if self._drained:
                self._break(f"connection to {self.peer} drained (GOAWAY) with no tunnels left")

    async def _poller(self) -> None:
        """Read idle relays' sockets as they become readable, in this one task.

        Each relayed socket is in one edge-triggered epoll set per connection, registered
        once. A request arriving on an idle relay is read, framed and written from here,
        with every other socket that became ready in the same poll: one wakeup, one TLS
        record and one write() for the batch, and no task switch, epoll_ctl() or
        rescheduling per request. Anything but a short read that fits the windows (EOF, an
        error, a full read, a tunnel out of window, a congested connection) is handed back
        to the relay's own task (`_hand_off`), which waits as a sender must."""
        ep, watched = self._ep, self._watched
        while True:
            await wait_readable(ep)
            for fd, events in ep.poll(0):
                entry = watched.get(fd)
                if entry is not None:
                    if events & _HANGUP:
                        entry[1].hup = True
                    self._readable(*entry)
            self.push()

    def _readable(self, stream_id: int, st: _StreamState) -> None:
        if not st.polled:
            st.edge = True   # the relay task is reading: it reads again before it idles
            return
        if self.congested or st.reset_code is not None or self.broken is not None:
            self._hand_off(st, None)
            return
        try:
            data = st.sock.recv(sockio.READ_SIZE)
        except BlockingIOError:
            return   # an edge for bytes the relay task already read
        except OSError as e:
            self._hand_off(st, e)
            return
        if data:
            try:
                n = self.codec.send(stream_id, data)
            except LocalProtocolError:
                n = 0   # the relay's own send reports it
            st.sent += n
            more = len(data) == sockio.READ_SIZE or st.hup
            if n == len(data) and not more:
                self.polled_reads += 1
                return   # the common case: a request, framed
            st.edge = more   # a full read may have left more, or EOF is queued: the relay reads on
            data = data[n:] or None
        self._hand_off(st, data)

    @staticmethod
    def _hand_off(st: _StreamState, what: bytes | OSError | None) -> None:
        st.polled = False
        st.handoff = what
        st.recv_lot.unpark_all()

    def watch(self, stream_id: int, st: _StreamState, sock: socket.socket) -> None:
        """Add a relayed socket to the poller's set (for as long as the relay runs)."""
        fd = sock.fileno()
        self._ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        self._watched[fd] = (stream_id, st)

    def unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._watched.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass   # the connection ended and closed the set

    def kick(self) -> None:
        self._kick.set()

    def _take_output(self) -> None:
        data = self.codec.take_output()
        if data:
            if self._out:
                self._out += data
            else:
                self._out = data   # the common case: no copy
            self._queued += len(data)

    def _write_some(self) -> int:
        try:
            n = self.transport.send_nowait(self._out)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._break(f"writing to {self.peer} failed: {e or type(e).__name__}")
            raise trio.BrokenResourceError(self.broken) from None
        if n:
            del self._out[:n]
            self._written += n
            self.bytes_out += n
            self._flushed_lot.unpark_all()
        return n

    def push(self) -> None:
        """Write the codec's output now if the socket takes it; leave the rest to the writer task."""
        self._take_output()
        if self._out and not self._writing and self.broken is None:
            try:
                self._write_some()
            except trio.BrokenResourceError:
                return
            if self._out or self.transport.pending:
                self.kick()

    def defer(self) -> None:
        """Queue the codec's output for the writer task. trio runs a woken task in the
        next scheduler round, after every task woken in this one, so the tunnels that
        had data in the same epoll batch leave together: one TLS record, one write(),
        one read and one wakeup at the peer, instead of one each. A sender checks
        `congested` and waits (flush) when the socket is not keeping up."""
        self._take_output()
        if not self._out or self._writing or self.broken is not None:
            return
        self.kick()

    @property
    def congested(self) -> bool:
        return len(self._out) > HIGH_WATER

    async def flush(self) -> None:
        """Return once everything queued so far was taken by the TLS socket; the one that
        writes also waits until no ciphertext is pending (back-pressure for senders)."""
        self._take_output()
        target = self._queued
        if self._writing:
            while self._written < target:
                if self.broken is not None:
                    raise trio.BrokenResourceError(self.broken)
                await self._flushed_lot.park()
            return
        if not self._out and not self.transport.pending:
            return
        self._writing = True
        try:
            while self._out or self.transport.pending:
                if self.broken is not None:
                    raise trio.BrokenResourceError(self.broken)
                if not self._write_some() and self.transport.pending:
                    await self.transport.wait_writable()
                self._take_output()
        finally:
            self._writing = False
            if (self._out or self.transport.pending) and self.broken is None:
                self.kick()   # cancelled while waiting: the writer task finishes these bytes

    async def aclose(self, reason: str = "") -> None:
        """GOAWAY then close: for idle connections and shutdown."""
        if self.broken is None:
            self.codec.close(0, reason)
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._break(reason or f"connection to {self.peer} closed locally")
        self._cancel.cancel()

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.debug("hbone: %s", why)
        for st in self.streams.values():
            self._wake(st)
        self._window_lot.unpark_all()
        self._flushed_lot.unpark_all()
        self._cancel.cancel()

    @staticmethod
    def _wake(st: _StreamState) -> None:
        """Wake whoever waits on this stream, a relay waiting for its socket included
        (notify_closing ends that wait; the relay then finds why and stops)."""
        st.recv_lot.unpark_all()
        if st.sock is not None:
            notify_closing(st.sock)

    # ---- events ------------------------------------------------------------------
    def _dispatch(self, ev: c.Event) -> None:
        if type(ev) is c.Data:   # by far the most frequent event: tested first
            st = self.streams.get(ev.stream_id)
            if st is None or st.recv_ended:
                self.codec.ack(ev.stream_id, ev.flow_length)   # nobody will read it
                return
            if ev.flow_length > len(ev.data):
                self.codec.ack(ev.stream_id, ev.flow_length - len(ev.data))   # padding
            if ev.data and self._deliver(ev.stream_id, st, ev.data):
                return   # written into the relay's socket: nobody waits for it
            st.recv_lot.unpark_all()
            return
        if isinstance(ev, c.TunnelRequested):
            self.streams[ev.stream_id] = _StreamState()
            if self._on_request is not None:
                self._on_request(ev)
            return
        if isinstance(ev, c.ConnectionClosed):
            # h2 cannot finish streams after GOAWAY, so the whole connection ends here.
            self._break(f"{self.peer} closed the connection (GOAWAY code {ev.code}"
                        f"{': ' + ev.reason if ev.reason else ''})")
            return
        if isinstance(ev, c.GoingAway):
            log.debug("hbone: %s is going away (GOAWAY, last stream %d)%s", self.peer, ev.last_stream_id,
                      f": {ev.reason}" if ev.reason else "")
            for sid, st in self.streams.items():
                if sid > ev.last_stream_id and sid % 2 == int(not self._server_side):
                    st.reset_code = REFUSED_STREAM   # never processed: safe to retry elsewhere
                    self._wake(st)
            self._window_lot.unpark_all()
            self._close_if_drained()
            return
        if isinstance(ev, c.WindowOpened):
            self._window_lot.unpark_all()
            return
        if isinstance(ev, c.BadRequest):
            log.info("hbone: refused stream %d from %s with %d: %s", ev.stream_id, self.peer, ev.status, ev.reason)
            return
        st = self.streams.get(ev.stream_id)
        if st is None:
            return
        elif isinstance(ev, c.HalfClosed):
            st.recv_ended = True
            if st.sock is not None and not st.buf and not st.draining:
                self.finish_output(st)
        elif isinstance(ev, c.Reset):
            st.reset_code = ev.code
            self._window_lot.unpark_all()
            self._wake(st)
            return
        elif isinstance(ev, (c.TunnelOpened, c.TunnelRefused)):
            st.response = ev
        st.recv_lot.unpark_all()

    def _deliver(self, stream_id: int, st: _StreamState, data: bytes) -> bool:
        """Into the stream's socket right away when nothing is queued before it, else queue
        (and, for a relayed stream, start a drain task to wait for the socket). True when
        all of it went into the socket."""
        # After a failed write the relay is ending with that error: queue, and closing acks.
        relayed = st.sock is not None and st.sink_error is None
        if relayed and not st.buf and not st.draining:
            try:
                n = self.sink_some(stream_id, st, data)
            except OSError as e:
                n, relayed = 0, False
                self._sink_failed(st, e)
            if n == len(data):
                return True
            data = data[n:]
        st.buf.append(data)
        if relayed:
            self.start_drain(stream_id, st)
        return False

    def sink_some(self, stream_id: int, st: _StreamState, data: bytes) -> int:
        """Write what the stream's socket takes now, counted and acknowledged to flow control
        (the window update goes out with the next push); OSError from the socket propagates."""
        try:
            n = st.sock.send(data)
        except BlockingIOError:
            return 0
        st.taken += n
        self.codec.ack(stream_id, n)
        return n

    def _sink_failed(self, st: _StreamState, e: OSError) -> None:
        st.sink_error = e
        self._wake(st)

    def finish_output(self, st: _StreamState) -> None:
        """END_STREAM, all data delivered: half-close the relay's socket."""
        try:
            sockio.shutdown_write(st.sock)
        except OSError as e:
            self._sink_failed(st, e)
            return
        st.out_done = True
        st.recv_lot.unpark_all()

    def start_drain(self, stream_id: int, st: _StreamState) -> None:
        if not st.draining and self._nursery is not None:
            st.draining = True
            self.drains_started += 1
            self._nursery.start_soon(self._drain, stream_id, st)

    async def _drain(self, stream_id: int, st: _StreamState) -> None:
        """Finish a relayed stream's buffer into its socket as the socket takes it; then the
        half-close if END_STREAM came. Ends early, quietly, when the relay ends (the socket
        is about to close) or the socket fails (the relay gets the error)."""
        sock = st.sock
        try:
            while st.buf and st.sock is sock and st.sink_error is None:
                await sockio.wait_writable(sock)
                if st.sock is not sock:
                    return
                chunk = st.buf[0]
                n = self.sink_some(stream_id, st, chunk)
                if n:
                    self.push()   # the window update
                    if n == len(chunk):
                        st.buf.pop(0)
                    else:
                        st.buf[0] = chunk[n:]
            if st.recv_ended and not st.buf and st.sock is sock and st.sink_error is None:
                self.finish_output(st)
        except trio.ClosedResourceError:
            pass   # notify_closing: the relay is ending and knows why
        except OSError as e:
            if st.sock is sock:
                self._sink_failed(st, e)
        finally:
            st.draining = False
            st.recv_lot.unpark_all()

    # ---- used by streams and the client --------------------------------------------
    def new_stream(self, stream_id: int) -> _StreamState:
        st = self.streams[stream_id] = _StreamState()
        return st

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._close_if_drained()

    def drain(self, reason: str = "") -> None:
        """Graceful GOAWAY: open tunnels finish, then the connection closes."""
        self.codec.drain(reason)
        self.kick()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        # Close from the writer, after it flushed the last tunnel's END_STREAM or RST.
        if self.codec.going_away and not self.streams and self.broken is None:
            self._drained = True
            self.kick()

    async def wait_window(self) -> None:
        await self._window_lot.park()

    def wake_senders(self) -> None:
        self._window_lot.unpark_all()
