"""HBONE over trio: one multiplexed TLS+h2 connection (`Mux`) and its tunnels (`HboneStream`).

The `Mux` owns the transport: a reader task feeds the sans-IO codec and routes events
to per-stream state; writes go through one lock in a shielded scope, because a write
cancelled half-way would leave a torn TLS record and break every other tunnel on the
connection (hypercorn does the same). A writer task flushes what the reader or a
closing stream queued (acks, settings acks, RST) so that those never block a caller.
"""
from __future__ import annotations

import logging
import operator
from collections import deque
from typing import Callable

import trio
from trio.lowlevel import ParkingLot, checkpoint

from . import codec as c
from .errors import LocalProtocolError, RemoteProtocolError, describe_tls_failure

log = logging.getLogger("meshcore.hbone")
READ_SIZE = 256 * 1024
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

    async def wait_window(self) -> None:
        await self._window_lot.park()


class HboneStream(trio.abc.HalfCloseableStream):
    """One tunnel: bytes in DATA frames, EOF as END_STREAM, abort as RST_STREAM."""

    def __init__(self, mux: Mux, stream_id: int, on_close: Callable[["HboneStream"], None] | None = None) -> None:
        self._mux = mux
        self.stream_id = stream_id
        self._st = mux.streams.get(stream_id) or mux.new_stream(stream_id)
        self._on_close = on_close
        self._closed = False
        self._sending = False
        self._receiving = False
        self.bytes_sent = self.bytes_received = 0

    @property
    def peer(self) -> str:
        return self._mux.peer

    def _broken(self) -> str | None:
        if self._st.reset_code is not None:
            return f"tunnel {self.stream_id} to {self._mux.peer} was reset by the peer (code {self._st.reset_code})"
        return self._mux.broken

    def _claim_send(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this HBONE stream")
        if self._closed:
            raise trio.ClosedResourceError("HBONE stream was closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._claim_send()
        self._sending = True
        try:
            if self._st.send_ended:
                raise trio.ClosedResourceError("HBONE stream already half-closed (send_eof)")
            view = memoryview(data).cast("B")
            if not view:
                await checkpoint()
            while view:
                if why := self._broken():
                    raise trio.BrokenResourceError(why)
                try:
                    n = self._mux.codec.send(self.stream_id, view)
                except LocalProtocolError as e:
                    raise trio.BrokenResourceError(f"tunnel {self.stream_id} to {self._mux.peer}: {e}") from None
                if n:
                    view = view[n:]
                    self.bytes_sent += n
                    await self._mux.flush()
                else:
                    await self._mux.wait_window()   # peer's reader is slow: push back
                if self._closed:
                    raise trio.ClosedResourceError("HBONE stream was closed while sending")
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._claim_send()
        self._sending = True
        try:
            while not self._closed and self._broken() is None and self._send_window() == 0:
                await self._mux.wait_window()
            await checkpoint()
        finally:
            self._sending = False

    def _send_window(self) -> int:
        try:
            return self._mux.codec.send_window(self.stream_id)
        except LocalProtocolError:
            return 1   # the stream is gone: send_all will not block, it will fail

    async def send_eof(self) -> None:
        self._claim_send()
        if self._st.send_ended:
            await checkpoint()
            return
        if why := self._broken():
            await checkpoint()
            raise trio.BrokenResourceError(why)
        self._st.send_ended = True
        try:
            self._mux.codec.half_close(self.stream_id)
        except LocalProtocolError as e:
            raise trio.BrokenResourceError(f"tunnel {self.stream_id} to {self._mux.peer}: {e}") from None
        await self._mux.flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this HBONE stream")
        if self._closed:
            raise trio.ClosedResourceError("HBONE stream was closed")
        self._receiving = True
        try:
            await checkpoint()
            st = self._st
            while not st.buf:
                if st.recv_ended:
                    return b""
                if why := self._broken():
                    raise trio.BrokenResourceError(why)
                await st.recv_lot.park()
                if self._closed:
                    raise trio.ClosedResourceError("HBONE stream was closed while receiving")
            limit = max_bytes or DEFAULT_RECEIVE
            chunk = st.buf.popleft()
            if len(chunk) > limit:
                st.buf.appendleft(chunk[limit:])
                chunk = chunk[:limit]
            self.bytes_received += len(chunk)
            # Acknowledge only what the application takes, so a slow reader pushes back.
            self._mux.codec.ack(self.stream_id, len(chunk))
            self._mux.kick()
            return chunk
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Graceful when both directions ended; otherwise END_STREAM + RST_STREAM (abort)."""
        if not self._closed:
            self._closed = True
            st, codec = self._st, self._mux.codec
            if self._broken() is None:
                try:
                    if not st.send_ended:
                        st.send_ended = True
                        codec.half_close(self.stream_id)
                    if not st.recv_ended:
                        codec.reset(self.stream_id)
                except LocalProtocolError:
                    codec.reset(self.stream_id)
                self._mux.kick()
            unread = sum(map(len, st.buf))
            st.buf.clear()
            codec.ack(self.stream_id, unread)   # give the connection window back
            st.recv_lot.unpark_all()
            self._mux.forget(self.stream_id)
            if self._on_close is not None:
                self._on_close(self)
        await checkpoint()
