"""One multiplexed HBONE connection (`Mux`): the codec, the TLS socket, and the tasks that drive them.

A reader task feeds the sans-IO codec and routes events to per-stream state
(`streamstate.StreamState`). Tunnels relayed to plain sockets are served by the
connection's relay machinery (`relay.Relays`: the socket sink the reader writes DATA
into, the backlog tasks for full sockets, and the poller task that reads idle relays'
sockets).

Output is one queue (`_out`, a list of buffers) owned by the connection. Tunnel DATA is queued (`defer`)
and written by the writer task once per scheduler round, so the tunnels that had data
in the same round share one TLS record and one write(); control output (window updates,
resets, headers) is written at once by whoever produced it (`push`, `flush`) unless a
write is already in progress. Bytes stay queued until the TLS socket takes them, and the
ciphertext it could not write yet waits there (`pending`) until the writer finishes it,
so a task cancelled mid-write never tears a TLS record.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio
from trio.lowlevel import Abort, ParkingLot, current_task, reschedule, wait_task_rescheduled

from meshcore.tlssock import TlsSocket

from . import codec as c
from .errors import RemoteProtocolError, describe_tls_failure
from .limits import LimitExceeded
from .relay import Relays
from .streamstate import StreamState

log = logging.getLogger("meshcore.hbone")
READ_SIZE = 256 * 1024
REFUSED_STREAM = 7   # RFC 9113 error code: the peer did not process the stream
DEFAULT_RECEIVE = 64 * 1024
HIGH_WATER = 256 * 1024   # queued output above which a sender waits for the socket
# Output shorter than this joins the last queued buffer when that is short too (a burst of
# small frames makes one TLS record); longer output (a bulk read's DATA) is queued where the
# codec framed it, and the TLS socket encrypts each buffer in place: no copy into a joint one.
COALESCE = 16 * 1024


class _Kick:
    """The writer task's wakeup: a trio.Event that resets itself when its one waiter wakes,
    without the Event and ParkingLot objects made and the lot's bookkeeping per round (the
    writer runs once per scheduler round with output)."""
    __slots__ = ("flag", "task")

    def __init__(self) -> None:
        self.flag = False
        self.task = None

    async def wait(self) -> None:
        if not self.flag:
            self.task = current_task()
            await wait_task_rescheduled(self._abort)
        self.flag = False

    def _abort(self, _raise_cancel) -> Abort:
        self.task = None
        return Abort.SUCCEEDED

    def set(self) -> None:
        self.flag = True
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


class Mux:
    """One HBONE connection: codec + transport + the tasks that drive them."""

    def __init__(self, transport: TlsSocket, codec: c.ClientConnection | c.ServerConnection,
                 peer: str, on_request: Callable[[c.TunnelRequested], None] | None = None) -> None:
        self.transport = transport
        self.codec = codec
        self.peer = peer
        self.streams: dict[int, StreamState] = {}
        self.broken: str | None = None     # why the connection is unusable, once it is
        self.limit_exceeded: str | None = None   # the `Limits` field the peer went over, if that ended it
        self.bytes_in = self.bytes_out = 0
        self.bad_requests = 0   # streams the codec refused itself (not CONNECT, bad :authority)
        self._on_request = on_request
        self._out: list[bytearray] = []    # codec output not yet on the wire, in order
        self._out_len = 0                  # its bytes
        self._writing = False              # a task is between send_nowait and wait_writable
        self._queued = self._written = 0   # totals, so flush() knows when its bytes left
        self._flushed_lot = ParkingLot()
        self._kick = _Kick()
        self._window_lot = ParkingLot()
        self._cancel = trio.CancelScope()
        self._server_side = isinstance(codec, c.ServerConnection)
        self._drained = False   # going away and no tunnel left: the writer closes the connection
        self.relays = Relays(self)

    # ---- driving -----------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch until the connection ends; then wake every waiter."""
        with self._cancel:
            try:
                await self.flush()   # our preface and settings
                async with trio.open_nursery() as nursery:
                    self.relays.nursery = nursery
                    nursery.start_soon(self._guard, self._writer)
                    nursery.start_soon(self._guard, self.relays.poll)
                    await self._guard(self._reader)
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._transport_failed(e)
        self._break(self.broken or f"connection to {self.peer} closed")
        self.relays.close()
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
        codec, block_deadline = self.codec, None
        while self.broken is None:
            if block_deadline is None:
                data = await self.transport.receive_view(READ_SIZE)
            else:
                # A header block is open: h2 holds its fragments until it ends, so it must end soon.
                data = b""
                with trio.move_on_at(block_deadline):
                    data = await self.transport.receive_view(READ_SIZE)
                if trio.current_time() >= block_deadline and codec.header_block_open:
                    exc = codec.guard.header_block_timed_out()
                    codec.calm_down(exc)
                    await self._refuse_peer(exc)
                    return
            if not data:
                self._break(f"{self.peer} closed the connection")
                return
            self.bytes_in += len(data)
            try:
                events = codec.receive_data(data)
            except RemoteProtocolError as e:
                await self._refuse_peer(e)
                return
            for ev in events:
                self._dispatch(ev)
            self.push()
            if not codec.header_block_open:
                block_deadline = None
            elif block_deadline is None:
                block_deadline = trio.current_time() + codec.limits.header_block_timeout

    async def _refuse_peer(self, e: RemoteProtocolError) -> None:
        """The peer broke HTTP/2 or went over a limit: the codec queued GOAWAY; send it and end."""
        if isinstance(e, LimitExceeded):
            self.limit_exceeded = e.limit
            why = f"HTTP/2 limit {e.limit} exceeded by {self.peer}: {e}"
        else:
            why = f"protocol error from {self.peer}: {e}"
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.flush()   # best effort: tell the peer why (GOAWAY)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._break(why)

    async def _writer(self) -> None:
        while True:
            await self._kick.wait()
            await self.flush()
            if self._drained:
                self._break(f"connection to {self.peer} drained (GOAWAY) with no tunnels left")

    def kick(self) -> None:
        self._kick.set()

    def _take_output(self) -> None:
        data = self.codec.take_output()
        if data:
            out = self._out
            if out and len(data) < COALESCE and len(out[-1]) < COALESCE:
                out[-1] += data
            else:
                out.append(data)   # no copy (the codec starts a new buffer)
            self._out_len += len(data)
            self._queued += len(data)

    def _write_some(self) -> int:
        try:
            n = self.transport.send_nowait(self._out)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._break(f"writing to {self.peer} failed: {e or type(e).__name__}")
            raise trio.BrokenResourceError(self.broken) from None
        if n:
            self._drop(n)
            self._written += n
            self.bytes_out += n
            if self._flushed_lot:   # (an empty lot's unpark_all costs ~2.5 us: once per write)
                self._flushed_lot.unpark_all()
        return n

    def _drop(self, n: int) -> None:
        """The first `n` queued bytes were taken."""
        out = self._out
        self._out_len -= n
        while n:
            first = out[0]
            if len(first) > n:
                del first[:n]
                return
            n -= len(first)
            del out[0]

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
        return self._out_len > HIGH_WATER

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
            st.interrupt()
        self._window_lot.unpark_all()
        self._flushed_lot.unpark_all()
        self._cancel.cancel()

    # ---- events ------------------------------------------------------------------
    def _dispatch(self, ev: c.Event) -> None:
        if type(ev) is c.Data:   # by far the most frequent event: tested first
            st = self.streams.get(ev.stream_id)
            if st is None or st.recv_ended:
                self.codec.ack(ev.stream_id, ev.flow_length)   # nobody will read it
                return
            if ev.flow_length > len(ev.data):
                self.codec.ack(ev.stream_id, ev.flow_length - len(ev.data))   # padding
            if ev.data:
                if st.link is None:
                    st.received.append(bytes(ev.data))   # (a view of the TLS socket's buffer)
                elif self.relays.deliver(ev.stream_id, st, ev.data):
                    return   # written into the relay's socket: nobody waits for it
            st.notify()
            return
        if isinstance(ev, c.TunnelRequested):
            self.streams[ev.stream_id] = StreamState()
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
                    st.mark_reset(REFUSED_STREAM)   # never processed: safe to retry elsewhere
            self._window_lot.unpark_all()
            self._close_if_drained()
            return
        if isinstance(ev, c.WindowOpened):
            if self._window_lot:
                self._window_lot.unpark_all()
            return
        if isinstance(ev, c.BadRequest):
            # Once per connection at info: a peer sending thousands must not flood the log.
            self.bad_requests += 1
            log.log(logging.INFO if self.bad_requests == 1 else logging.DEBUG,
                    "hbone: refused stream %d from %s with %d: %s%s", ev.stream_id, self.peer, ev.status, ev.reason,
                    " (further refusals on this connection are logged at debug level)" if self.bad_requests == 1 else "")
            return
        st = self.streams.get(ev.stream_id)
        if st is None:
            return
        elif isinstance(ev, c.HalfClosed):
            st.recv_ended = True
            if st.link is not None and not st.received and not st.link.backlog:
                self.relays.finish_output(st)
        elif isinstance(ev, c.Reset):
            # Nothing more arrives on a reset stream: out of the table (whoever holds it is woken).
            del self.streams[ev.stream_id]
            st.mark_reset(ev.code)
            self._window_lot.unpark_all()
            self._close_if_drained()
            return
        elif isinstance(ev, (c.TunnelOpened, c.TunnelRefused)):
            st.response = ev
        st.notify()

    # ---- used by streams and the client --------------------------------------------
    def new_stream(self, stream_id: int) -> StreamState:
        st = self.streams[stream_id] = StreamState()
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
        if self._window_lot:
            self._window_lot.unpark_all()
