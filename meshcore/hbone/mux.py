"""One multiplexed HBONE connection (`Mux`): the codec, the transport, and the tasks that drive them.

A reader task feeds the sans-IO codec and routes events to per-stream state; writes go
through one lock in a shielded scope, because a write cancelled half-way would leave a
torn TLS record and break every other tunnel on the connection (hypercorn does the
same). A writer task flushes what the reader or a closing stream queued (acks,
settings acks, RST) so that those never block a caller.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import trio
from trio.lowlevel import ParkingLot

from . import codec as c
from .errors import RemoteProtocolError, describe_tls_failure

log = logging.getLogger("meshcore.hbone")
READ_SIZE = 256 * 1024
REFUSED_STREAM = 7   # RFC 9113 error code: the peer did not process the stream
DEFAULT_RECEIVE = 64 * 1024


class _StreamState:
    __slots__ = ("buf", "recv_ended", "send_ended", "reset_code", "response", "recv_lot")

    def __init__(self) -> None:
        self.buf: deque[bytes] = deque()
        self.recv_ended = False
        self.send_ended = False
        self.reset_code: int | None = None
        self.response: c.TunnelOpened | c.TunnelRefused | None = None
        self.recv_lot = ParkingLot()


class Mux:
    """One HBONE connection: codec + transport + the tasks that drive them."""

    def __init__(self, transport: trio.abc.Stream, codec: c.ClientConnection | c.ServerConnection,
                 peer: str, on_request: Callable[[c.TunnelRequested], None] | None = None) -> None:
        self.transport = transport
        self.codec = codec
        self.peer = peer
        self.streams: dict[int, _StreamState] = {}
        self.broken: str | None = None     # why the connection is unusable, once it is
        self.bytes_in = self.bytes_out = 0
        self._on_request = on_request
        self._write_lock = trio.Lock()
        self._kick = trio.Event()
        self._window_lot = ParkingLot()
        self._cancel = trio.CancelScope()
        self._server_side = isinstance(codec, c.ServerConnection)
        self._drained = False

    # ---- driving -----------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch until the connection ends; then wake every waiter."""
        with self._cancel:
            try:
                await self.flush()   # our preface and settings
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader()
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._break(describe_tls_failure(e, self.peer, we_are_server=self._server_side)
                            if e.__cause__ is not None else f"connection to {self.peer} broke: {e or type(e).__name__}")
        self._break(self.broken or f"connection to {self.peer} closed")
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.transport)

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
            self.kick()

    async def _writer(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            await self.flush()
            if self._drained:
                self._break(f"connection to {self.peer} drained (GOAWAY) with no tunnels left")

    def kick(self) -> None:
        self._kick.set()

    async def flush(self) -> None:
        async with self._write_lock:
            with trio.CancelScope(shield=True):
                data = self.codec.data_to_send()
                if data:
                    try:
                        await self.transport.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                        self._break(f"writing to {self.peer} failed: {e or type(e).__name__}")
                        raise trio.BrokenResourceError(self.broken) from None
                    self.bytes_out += len(data)

    async def aclose(self, reason: str = "") -> None:
        """GOAWAY then close: for idle connections and shutdown."""
        if self.broken is None:
            self.codec.close(0, reason)
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await self.flush()
                except trio.BrokenResourceError:
                    pass
            self._break(reason or f"connection to {self.peer} closed locally")
        self._cancel.cancel()

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.debug("hbone: %s", why)
        for st in self.streams.values():
            st.recv_lot.unpark_all()
        self._window_lot.unpark_all()
        self._cancel.cancel()

    # ---- events ------------------------------------------------------------------
    def _dispatch(self, ev: c.Event) -> None:
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
                    st.recv_lot.unpark_all()
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
        if isinstance(ev, c.Data):
            if st is None or st.recv_ended:
                self.codec.ack(ev.stream_id, ev.flow_length)   # nobody will read it
                return
            if ev.flow_length > len(ev.data):
                self.codec.ack(ev.stream_id, ev.flow_length - len(ev.data))   # padding
            if ev.data:
                st.buf.append(ev.data)
        elif st is None:
            return
        elif isinstance(ev, c.HalfClosed):
            st.recv_ended = True
        elif isinstance(ev, c.Reset):
            st.reset_code = ev.code
            self._window_lot.unpark_all()
        elif isinstance(ev, (c.TunnelOpened, c.TunnelRefused)):
            st.response = ev
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
