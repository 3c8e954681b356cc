"""HboneStream: one tunnel as a trio HalfCloseableStream over a shared `Mux`.

Bytes travel in DATA frames, EOF is END_STREAM (TCP FIN), abort is RST_STREAM (TCP RST).
Received bytes are acknowledged to flow control only when the application reads them,
so a slow reader pushes back on the sender instead of growing our buffers.
"""
from __future__ import annotations

import operator
import socket
from typing import Callable

import trio
from trio.lowlevel import checkpoint

from meshcore import sockio

from .errors import LocalProtocolError
from .mux import DEFAULT_RECEIVE, Mux
from .relay import RELAY_READ

CONNECT_ERROR = 0xA   # RFC 9113: "the connection established in response to a CONNECT request was reset"

__all__ = ["HboneStream", "Mux"]


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

    @property
    def bytes_received(self) -> int:
        """Bytes handed to the application (by receive_some or into its socket)."""
        return self._st.taken

    @property
    def bytes_sent(self) -> int:
        """Bytes framed into the tunnel (by send_all or from the relayed socket)."""
        return self._st.sent

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
        await checkpoint()   # the Stream contract; relay() calls _send, which yields only to wait
        await self._send(data)

    async def send_eager(self, data: bytes | bytearray | memoryview) -> None:
        """send_all without its leading checkpoint: it yields only when it must wait (window,
        congestion). For a task whose next step waits anyway (a proxy that reads the answer
        next), the checkpoint is a scheduler round trip that buys nothing."""
        await self._send(data)

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        self._claim_send()
        self._sending = True
        try:
            if self._st.send_ended:
                raise trio.ClosedResourceError("HBONE stream already half-closed (send_eof)")
            view = memoryview(data).cast("B")
            while view:
                if why := self._broken():
                    raise trio.BrokenResourceError(why)
                try:
                    n = self._mux.codec.send(self.stream_id, view)
                except LocalProtocolError as e:
                    raise trio.BrokenResourceError(f"tunnel {self.stream_id} to {self._mux.peer}: {e}") from None
                if n:
                    view = view[n:]
                    self._st.sent += n
                    self._mux.defer()
                    if self._mux.congested:
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
            if self._closed:
                raise trio.ClosedResourceError("HBONE stream was closed while waiting to send")
        finally:
            self._sending = False

    def _send_window(self) -> int:
        try:
            return self._mux.codec.send_window(self.stream_id)
        except LocalProtocolError:
            return 1   # the stream is gone: send_all will not block, it will fail

    async def send_eof(self) -> None:
        try:
            self._end_send()
        finally:
            await checkpoint()

    def _end_send(self) -> None:
        """send_eof() without its checkpoint (the relay's end, which yields when it waits)."""
        self._claim_send()
        if self._st.send_ended:
            return
        if why := self._broken():
            raise trio.BrokenResourceError(why)
        self._st.send_ended = True
        try:
            self._mux.codec.half_close(self.stream_id)
        except LocalProtocolError as e:
            raise trio.BrokenResourceError(f"tunnel {self.stream_id} to {self._mux.peer}: {e}") from None
        # Queued for the writer, as DATA is: the tunnels that end in the same scheduler round
        # (a burst of short connections) share one TLS record and one write().
        self._mux.defer()

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
            st = self._st
            if st.received or st.recv_ended or self._broken():
                await checkpoint()   # the Stream contract; otherwise waiting below is the checkpoint
            while not st.received:
                if st.recv_ended:
                    return b""
                if why := self._broken():
                    raise trio.BrokenResourceError(why)
                await st.wait()
                if self._closed:
                    raise trio.ClosedResourceError("HBONE stream was closed while receiving")
            chunk = st.take_received(max_bytes or DEFAULT_RECEIVE)
            # Acknowledge only what the application takes, so a slow reader pushes back.
            self._mux.codec.ack(self.stream_id, len(chunk))
            self._mux.push()
            return chunk
        finally:
            self._receiving = False

    # ---- relaying to a socket: the proxy's hot path --------------------------------------
    async def relay(self, sock: socket.socket) -> None:
        """Relay between this tunnel and `sock` until both directions ended, in one task.

        Reading `sock` into the tunnel: this task reads while bytes keep coming and ends
        the direction with END_STREAM at EOF; while `sock` is idle it parks, and the
        connection's poller reads it instead (`Relays.poll`: no wakeup of this task per
        request), handing back to this task whatever needs waiting (EOF, a full window,
        a congested connection, a large transfer). The other direction needs no task of
        its own: the connection's reader writes arriving DATA straight into `sock` and
        half-closes it on END_STREAM, and starts a backlog task only while `sock` is full
        (see `relay.Relays`). A reset, a broken connection or a failed write into `sock` wakes
        this task wherever it waits.

        OSError from `sock` propagates (the caller treats it as the local side's reset);
        so do trio.BrokenResourceError (the tunnel or its connection broke) and
        trio.ClosedResourceError (this stream was closed)."""
        st, relays = self._st, self._mux.relays
        if self._receiving or self._sending:
            raise trio.BusyResourceError("another task is already using this HBONE stream")
        self._receiving = True
        link = relays.attach(self.stream_id, st, sock)
        try:
            self._check_relay()
            relays.watch(self.stream_id, st)
            rounds = 0
            while True:
                data, link.handoff = link.handoff, None
                if data is None:
                    link.edge = False   # what this recv leaves behind raises a new edge
                    try:
                        data = sock.recv(RELAY_READ)
                    except BlockingIOError:
                        await self._idle()
                        continue
                if isinstance(data, OSError):
                    raise data
                if not data:
                    break
                await self._send(data)
                if len(data) < RELAY_READ and not (link.edge or link.hup):
                    # Read dry (a short read), and no edge while _send waited: from here
                    # the next edge reaches the poller.
                    await self._idle()
                    rounds = 0
                else:
                    rounds += 1
                    if rounds >= sockio.FAIR_ROUNDS:
                        rounds = 0
                        await checkpoint()
            self._check_relay()
            self._end_send()
            while not link.out_done:
                self._check_relay()
                await st.wait()
        except OSError:
            # RFC 9113 section 8.5: the TCP side failed (the app's reset): RST_STREAM(CONNECT_ERROR),
            # so the far side resets its TCP connection too instead of seeing a clean end.
            self.reset(CONNECT_ERROR)
            raise
        finally:
            relays.detach(st)   # the caller closes `sock` next
            self._receiving = False

    async def _idle(self) -> None:
        """Park until the connection's poller hands `sock` back (or the relay must stop)."""
        st = self._st
        link = st.link
        self._check_relay()
        link.polled = True
        try:
            while link.polled:
                await st.wait()
                self._check_relay()
        finally:
            link.polled = False

    def _check_relay(self) -> None:
        link = self._st.link
        if link is not None and link.error is not None:
            raise link.error
        if why := self._broken():
            raise trio.BrokenResourceError(why)
        if self._closed:
            raise trio.ClosedResourceError("HBONE stream was closed while relaying")

    def reset(self, code: int = CONNECT_ERROR) -> None:
        """Abort the tunnel now with RST_STREAM(`code`); what follows on it is refused."""
        st = self._st
        if st.reset_code is None and self._mux.broken is None:
            st.send_ended = True
            self._mux.codec.reset(self.stream_id, code)
            self._mux.push()

    async def aclose(self) -> None:
        """Graceful when both directions ended; otherwise END_STREAM + RST_STREAM (abort)."""
        self.close()
        await checkpoint()

    def close(self) -> None:
        """aclose() without the checkpoint, for a handler's `finally` (as trio's
        aclose_forcefully, whose cancelled scope costs a raised and caught Cancelled per
        tunnel, here ~1 in 30 of a new connection's Python time)."""
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
                # With the writer's next batch, as the END_STREAM the relay queued just before:
                # the tunnels that end in the same round share one TLS record and one write().
                self._mux.defer()
            codec.ack(self.stream_id, st.discard_received())   # give the connection window back
            st.notify()
            self._mux.wake_senders()
            self._mux.forget(self.stream_id)
            if self._on_close is not None:
                self._on_close(self)
