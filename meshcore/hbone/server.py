"""HBONE server: the accept loop, TLS with client certificates, one task per tunnel.

Shaped like `trio.serve_listeners`: every accepted connection runs in its own task and
is closed in `finally`; running out of file descriptors logs and backs off instead of
killing the listener. A bad peer (plaintext, garbage, foreign CA, no certificate,
malformed HTTP/2) costs one log line naming it and its connection, never the server.
"""
from __future__ import annotations

import errno
import logging
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from meshcore import sockio
from meshcore.tls import IdentityMismatch, verify_peer_identity
from meshcore.tlssock import TlsSocket

from . import codec as c
from .errors import LocalProtocolError, describe_tls_failure
from .limits import DEFAULT_LIMITS, Limits
from .mux import Mux
from .stream import HboneStream

log = logging.getLogger("meshcore.hbone")
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_BACKOFF = 0.1


@dataclass
class ServerStats:
    """Counters ztunnel turns into metrics; `on_event(name, peer)` sees each increment."""
    connections_accepted: int = 0
    connections_active: int = 0
    handshake_failures: int = 0
    protocol_errors: int = 0
    tunnels_requested: int = 0
    tunnels_accepted: int = 0
    tunnels_refused: int = 0
    handler_errors: int = 0
    tunnels_reset_early: int = 0   # reset by the client before they were answered (never dialled, or cut off)
    # Connections closed with GOAWAY(ENHANCE_YOUR_CALM), by the `Limits` field exceeded;
    # `on_event` sees "limit_exceeded:<field>".
    limits_exceeded: dict[str, int] = field(default_factory=dict)
    on_event: Callable[[str, str], None] | None = field(default=None, repr=False)

    def bump(self, name: str, peer: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)
        if self.on_event is not None:
            self.on_event(name, peer)

    def limit_exceeded(self, limit: str, peer: str) -> None:
        self.limits_exceeded[limit] = self.limits_exceeded.get(limit, 0) + 1
        if self.on_event is not None:
            self.on_event(f"limit_exceeded:{limit}", peer)


class InboundTunnel:
    """One CONNECT request, handed to the handler; answer it with accept() or refuse()."""

    def __init__(self, mux: Mux, stats: ServerStats, ev: c.TunnelRequested, peer_identity: str,
                 peer_address: tuple) -> None:
        self._mux, self._stats = mux, stats
        self._st = mux.streams[ev.stream_id]
        self.stream_id = ev.stream_id
        self.authority: tuple[str, int] = ev.authority
        self.headers = ev.headers
        self.peer_identity = peer_identity
        self.peer_address = peer_address
        self.stream: HboneStream | None = None
        self.answered = False

    @property
    def peer_certificate(self) -> bytes | None:
        """DER leaf of the client, for logs and metrics (serial, expiry); may be None.
        Read from the connection when asked: a copy per tunnel is 500 B an idle one holds."""
        return self._mux.transport.getpeercert(binary_form=True)

    @property
    def reset_code(self) -> int | None:
        """The RST_STREAM code if the client reset the tunnel (then nothing more goes through it)."""
        return self._st.reset_code

    async def accept(self) -> HboneStream:
        self._answer()
        assert isinstance(self._mux.codec, c.ServerConnection)
        try:
            self._mux.codec.accept(self.stream_id)
        except LocalProtocolError as e:   # the client gave up (RST) before we answered
            self._mux.forget(self.stream_id)
            raise trio.BrokenResourceError(f"tunnel {self.stream_id} from {self._mux.peer}: {e}") from None
        self.stream = HboneStream(self._mux, self.stream_id)
        self._stats.bump("tunnels_accepted", self._mux.peer)
        # The 200 goes with the writer's next batch (see HboneConnection.open_tunnel). No
        # checkpoint: the caller's relay waits for the app's first bytes next anyway.
        self._mux.defer()
        return self.stream

    async def refuse(self, status: int, reason: str = "") -> None:
        self._answer()
        assert isinstance(self._mux.codec, c.ServerConnection)
        try:
            self._mux.codec.refuse(self.stream_id, status, reason)
        except LocalProtocolError as e:
            if not 200 < status < 600:
                raise
            log.debug("hbone: could not refuse tunnel %d from %s: %s", self.stream_id, self._mux.peer, e)
        self._mux.forget(self.stream_id)
        self._stats.bump("tunnels_refused", self._mux.peer)
        await self._mux.flush()

    def _answer(self) -> None:
        if self.answered:
            raise LocalProtocolError(f"tunnel {self.stream_id} from {self._mux.peer} was already answered")
        if self._mux.broken:
            raise trio.BrokenResourceError(self._mux.broken)
        self.answered = True
        self._st.pending_scope = None   # answered: a reset now ends the tunnel, not the handler


Handler = Callable[[InboundTunnel], Awaitable[None]]


AnyListener = trio.abc.Listener[trio.SocketStream]


class _Live:
    """The server's open connections, so a drain can reach each of them."""

    def __init__(self) -> None:
        self.muxes: set[Mux] = set()
        self.draining = False

    def drain_all(self) -> None:
        self.draining = True
        for mux in list(self.muxes):
            mux.drain("server draining")


async def serve_hbone(listeners: list[AnyListener] | AnyListener,
                      ssl_context_for_local: Callable[[], ssl.SSLContext], handler: Handler, *,
                      handshake_timeout: float = 10, stats: ServerStats | None = None,
                      drain: trio.Event | None = None, limits: Limits = DEFAULT_LIMITS,
                      task_status: trio.TaskStatus[list[AnyListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve HBONE on already-bound listeners (any trio Listener of SocketStreams).

    Runs until cancelled (every connection closes at once) or, when `drain` is set, stops
    accepting, sends each connection a graceful GOAWAY and returns once their tunnels
    have finished; put a deadline on the caller's cancel scope to bound the drain.
    `limits` bound what one client connection may make us do (`limits.Limits`).
    """
    if isinstance(listeners, trio.abc.Listener):
        listeners = [listeners]
    stats = stats if stats is not None else ServerStats()
    live = _Live()
    async with trio.open_nursery() as connections:
        with trio.CancelScope() as accepting:
            if drain is not None:
                connections.start_soon(_drain_when, drain, accepting, live)
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(_accept_loop, listener, ssl_context_for_local, handler, handshake_timeout,
                                         stats, connections, live, limits)
                task_status.started(listeners)


async def _drain_when(drain: trio.Event, accepting: trio.CancelScope, live: _Live) -> None:
    await drain.wait()
    accepting.cancel()   # closes the listeners: new clients get "connection refused"
    live.drain_all()


async def _accept_loop(listener: AnyListener, ctx_for: Callable[[], ssl.SSLContext], handler: Handler,
                       handshake_timeout: float, stats: ServerStats, nursery: trio.Nursery, live: _Live,
                       limits: Limits) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno in _RESOURCE_ERRNOS:
                    log.error("hbone: accept failed (%s); raise the file descriptor limit or lower load, "
                              "backing off %.1fs", errno.errorcode.get(e.errno, e.errno), ACCEPT_BACKOFF)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                raise
            nursery.start_soon(_serve_connection, stream, ctx_for, handler, handshake_timeout, stats, live, limits)


def _peer_of(stream: trio.SocketStream) -> tuple[tuple, str]:
    try:
        addr = stream.socket.getpeername()
    except (OSError, AttributeError):
        return ("?", 0), "unknown peer"
    return addr, c.format_authority(addr[0], addr[1])


async def _serve_connection(stream: trio.SocketStream, ctx_for: Callable[[], ssl.SSLContext], handler: Handler,
                            handshake_timeout: float, stats: ServerStats, live: _Live, limits: Limits) -> None:
    addr, peer = _peer_of(stream)
    stats.bump("connections_accepted", peer)
    stats.connections_active += 1
    tls: TlsSocket | None = None
    try:
        ctx = ctx_for()   # before detaching: if it fails, `finally` still closes the stream
        tls = TlsSocket(sockio.detach(stream), ctx, server_side=True)
        identity = await _handshake(tls, peer, handshake_timeout)
        if identity is None:
            stats.bump("handshake_failures", peer)
            return
        early = _Early()
        async with trio.open_nursery() as tunnels:
            def on_request(ev: c.TunnelRequested) -> None:
                stats.bump("tunnels_requested", peer)
                tunnels.start_soon(_run_handler, handler, InboundTunnel(mux, stats, ev, identity, addr), stats, early)

            mux = Mux(tls, c.ServerConnection(limits), f"{peer} ({identity})", on_request)
            live.muxes.add(mux)
            if live.draining:
                mux.drain("server draining")
            try:
                await mux.run()
            finally:
                live.muxes.discard(mux)
            # The connection is gone; tunnels on it can only fail now, so stop their handlers.
            tunnels.cancel_scope.cancel()
        if mux.limit_exceeded is not None:
            # Once per connection, however many streams it abused.
            stats.limit_exceeded(mux.limit_exceeded, identity)
            log.warning("hbone: closed connection from %s (%s) with GOAWAY(ENHANCE_YOUR_CALM): %s; "
                        "%d tunnel(s) reset before being answered", peer, identity, mux.broken, early.count)
        elif mux.broken and mux.broken.startswith("protocol error"):
            stats.bump("protocol_errors", peer)
            log.warning("hbone: closed connection from %s: %s", peer, mux.broken)
    except Exception as e:   # one peer must never take the server down
        log.exception("hbone: connection from %s failed unexpectedly: %s", peer, e)
    finally:
        stats.connections_active -= 1
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(tls if tls is not None else stream)


async def _handshake(tls: TlsSocket, peer: str, timeout: float) -> str | None:
    """TLS with a required client certificate; return the client's SPIFFE ID, or None (logged)."""
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
        if tls.selected_alpn_protocol() != "h2":
            log.warning("hbone: rejected %s: it did not negotiate ALPN h2 (not an HBONE client?)", peer)
            return None
        return verify_peer_identity(tls, None, f"client {peer}")
    except trio.TooSlowError:
        log.warning("hbone: rejected %s: TLS handshake took longer than %gs (stalled or not a TLS client)",
                    peer, timeout)
    except IdentityMismatch as e:
        log.warning("hbone: rejected %s: %s; mesh certificates carry one spiffe:// URI SAN", peer,
                    e.args[0] if e.args else e)
    except (trio.BrokenResourceError, ssl.SSLError) as e:
        log.warning("hbone: rejected %s: %s", peer, describe_tls_failure(e, peer, we_are_server=True))
    return None


class _Early:
    """Tunnels of one connection the client reset before they were answered."""
    count = 0


async def _run_handler(handler: Handler, req: InboundTunnel, stats: ServerStats, early: _Early) -> None:
    st = req._st
    if st.reset_code is not None:
        # Reset in the same read as its request (rapid reset): no handler, no dial of the app.
        early.count += 1
        stats.bump("tunnels_reset_early", req._mux.peer)
        return
    try:
        # A reset before the handler answers cancels it (a dial in progress is abandoned).
        with trio.CancelScope() as st.pending_scope:
            await handler(req)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        log.debug("hbone: tunnel %s from %s ended: %s", req.stream_id, req.peer_address, e)
    except Exception:
        stats.bump("handler_errors", str(req.peer_address))
        log.exception("hbone: handler for tunnel to %s:%d from %s failed", *req.authority, req.peer_identity)
        if not req.answered and st.reset_code is None:
            try:
                await req.refuse(503, "internal error in the destination ztunnel")
            except (trio.BrokenResourceError, LocalProtocolError):
                pass
    finally:
        st.pending_scope = None
        if not req.answered and st.reset_code is not None:
            early.count += 1
            stats.bump("tunnels_reset_early", req._mux.peer)
        elif not req.answered:
            # A handler that neither accepted nor refused would leave the client waiting.
            try:
                await req.refuse(503, "no handler answered the tunnel")
            except (trio.BrokenResourceError, LocalProtocolError):
                pass
        if req.stream is not None:
            req.stream.close()
