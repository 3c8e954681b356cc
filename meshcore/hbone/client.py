"""HBONE client: TLS+h2 connections to ztunnels, pooled and multiplexed.

Pool key is (source identity, destination identity, destination address) as in the
design: a tunnel never rides a connection authenticated as someone else. Callers that
open connections from several pods' network namespaces also pass `source_address`, so
a tunnel leaves from its own pod's netns (Istio's WorkloadKey carries the source IP too). A new TLS
connection asks `ssl_context_for(source_identity)` for its context, so a renewed
certificate is used from then on while open connections keep their old session.
"""
from __future__ import annotations

import errno
import logging
import socket
import ssl
from contextlib import AsyncExitStack
from typing import Callable, Sequence

import trio
from trio.lowlevel import ParkingLot

from meshcore import sockio
from meshcore.tls import IdentityMismatch, verify_peer_identity
from meshcore.tlssock import TlsSocket

from . import codec as c
from .errors import (STATUS_ADVICE, HboneConnectionLost, HboneConnectRefused, HboneConnectTimeout,
                     HboneError, HboneIdentityMismatch, HboneTlsError, HboneTunnelRefused,
                     LocalProtocolError, describe_tls_failure)
from .limits import DEFAULT_LIMITS, Limits
from .mux import REFUSED_STREAM, Mux
from .stream import HboneStream
from .streamstate import StreamState

log = logging.getLogger("meshcore.hbone")
SocketFactory = Callable[[int], socket.socket]
PoolKey = tuple[str, str, tuple[str, int], str]


def _peer(address: tuple[str, int]) -> str:
    return c.format_authority(address[0], address[1])


async def _open_tcp(address: tuple[str, int], socket_factory: SocketFactory | None,
                    timeout: float) -> socket.socket:
    family = sockio.family_of(address[0])
    sock = socket_factory(family) if socket_factory else socket.socket(family, socket.SOCK_STREAM)
    peer = _peer(address)
    try:
        return await sockio.connect(sock, address, timeout)
    except trio.TooSlowError:
        raise HboneConnectTimeout(f"connection to {peer} timed out, maybe a NetworkPolicy or "
                                  f"firewall blocks HBONE port {address[1]}") from None
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            raise HboneConnectRefused(f"connection to {peer} refused: is ztunnel running on the "
                                      f"destination's node and listening on HBONE port {address[1]}?") from None
        raise HboneConnectRefused(f"cannot connect to {peer}: {e.strerror or e}; check routes to the "
                                  f"destination node") from None


class _NoRoom(HboneConnectionLost):
    """This connection cannot take another stream; the pool retries on a new one."""


class HboneConnection:
    """One verified TLS+h2 connection; its reader runs in the pool's nursery."""

    def __init__(self, mux: Mux, key: PoolKey) -> None:
        self.mux = mux
        self.key = key
        self.active = 0                 # tunnels opened or opening on it
        self.idle_since = trio.current_time()
        self.tunnels_opened = 0
        self.full = False

    @classmethod
    async def establish(cls, address: tuple[str, int], ssl_context: ssl.SSLContext, key: PoolKey,
                        expected_identity: str | None, socket_factory: SocketFactory | None,
                        timeout: float, limits: Limits = DEFAULT_LIMITS) -> "HboneConnection":
        peer = _peer(address)
        tls = TlsSocket(await _open_tcp(address, socket_factory, timeout), ssl_context, server_side=False)
        try:
            with trio.fail_after(timeout):
                await tls.do_handshake()
            if tls.selected_alpn_protocol() != "h2":
                raise HboneTlsError(f"{peer} did not negotiate ALPN h2; is port {address[1]} an HBONE listener?")
            # Verify who we reached before a single byte of the tunnel request leaves.
            verify_peer_identity(tls, expected_identity, f"peer {peer}")
        except trio.TooSlowError:
            await trio.aclose_forcefully(tls)
            raise HboneConnectTimeout(f"TLS handshake with {peer} timed out; is the peer an HBONE "
                                      f"listener, or is something dropping packets?") from None
        except IdentityMismatch as e:
            await trio.aclose_forcefully(tls)
            raise HboneIdentityMismatch(f"{e.args[0] if e.args else e}; the address no longer belongs to the workload the control "
                                        f"plane named (stale endpoint?) or someone else answers there") from None
        except trio.BrokenResourceError as e:
            await trio.aclose_forcefully(tls)
            raise HboneTlsError(describe_tls_failure(e, peer, we_are_server=False)) from None
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return cls(Mux(tls, c.ClientConnection(limits), peer), key)

    @property
    def usable(self) -> bool:
        limit = min(self.mux.codec.peer_max_concurrent_streams, c.MAX_CONCURRENT_STREAMS)
        codec = self.mux.codec
        return (self.mux.broken is None and not codec.closed and not codec.going_away and not self.full
                and self.active < limit)

    async def open_tunnel(self, authority: str, headers: Sequence[tuple[str, str]], timeout: float,
                          answers: "_Answers | None" = None) -> HboneStream:
        """One tunnel on this connection, answered within `timeout` (watched by `answers`, the
        pool's, else by a cancel scope of its own)."""
        mux, peer = self.mux, self.mux.peer
        try:
            sid = mux.codec.open_tunnel(authority, tuple(headers))
        except LocalProtocolError as e:
            # The peer lowered its stream limit, or the connection is closing: use another.
            self._closed_one(None)
            self.full = True
            raise _NoRoom(f"cannot open a tunnel on the connection to {peer}: {e}") from None
        stream = HboneStream(mux, sid, on_close=self._closed_one)
        st = mux.streams[sid]
        try:
            # HEADERS go with the writer's next batch: tunnels opened in the same scheduler
            # round (a burst of new connections) share one TLS record and one write().
            mux.defer()
            if answers is None:
                with trio.fail_after(timeout):
                    await self._answer(st, authority, None)
            else:
                await answers.wait(self, st, authority, trio.current_time() + timeout)
            if isinstance(st.response, c.TunnelRefused):
                r = st.response
                advice = STATUS_ADVICE.get(r.status, "the destination refused the tunnel")
                detail = f" ({r.reason})" if r.reason else ""
                raise HboneTunnelRefused(f"{peer} refused the tunnel to {authority} with HTTP {r.status}: "
                                         f"{advice}{detail}", r.status, r.reason)
        except trio.TooSlowError:
            stream.close()
            raise HboneConnectTimeout(f"{peer} did not answer the tunnel request for {authority} within "
                                      f"{timeout:g}s; is the destination ztunnel overloaded?") from None
        except trio.BrokenResourceError:
            stream.close()
            raise HboneConnectionLost(self._lost(authority)) from None
        except BaseException:
            stream.close()
            raise
        self.tunnels_opened += 1
        return stream

    async def _answer(self, st: StreamState, authority: str, deadline: float | None) -> None:
        """Until the peer answered the tunnel's CONNECT (or TooSlowError once `deadline` passed)."""
        mux, peer = self.mux, self.mux.peer
        while st.response is None:
            if st.reset_code == REFUSED_STREAM:
                raise _NoRoom(f"{peer} did not process the tunnel to {authority} (REFUSED_STREAM "
                              f"or GOAWAY); it is safe to retry on a new connection")
            if st.reset_code is not None:
                raise HboneTunnelRefused(f"{peer} reset the tunnel to {authority} before answering "
                                         f"(code {st.reset_code}); it may be overloaded", 0)
            if mux.broken:
                raise HboneConnectionLost(self._lost(authority))
            if deadline is not None and trio.current_time() >= deadline:
                raise trio.TooSlowError
            await st.wait()

    def _lost(self, authority: str) -> str:
        msg = f"tunnel to {authority} via {self.mux.peer} failed: {self.mux.broken}"
        if self.tunnels_opened == 0:
            # TLS 1.3 clients learn that the server rejected their certificate only now.
            msg += ("; the connection never carried a tunnel: if this repeats, the peer may reject our "
                    "certificate (signed by another mesh CA, or expired), see its log")
        return msg

    def _closed_one(self, _stream: HboneStream | None) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle_since = trio.current_time()


class _Answers:
    """The pool's tunnels waiting for the answer to their CONNECT, and their deadlines: one
    task wakes the late ones (each then raises TooSlowError), checking every tick while any
    wait and for a while after; a cancel scope per tunnel cost ~10 us of a new connection.
    A tunnel times out between its deadline and a tick (an eighth of the timeout, at most
    1 s) after it."""

    IDLE_TICKS = 16   # ticks with nothing waiting before the task parks until a tunnel waits

    def __init__(self, timeout: Callable[[], float]) -> None:
        self._timeout = timeout   # the pool's open_timeout, as it is now
        self._waiting: dict[StreamState, float] = {}
        self._parked = ParkingLot()

    async def wait(self, conn: HboneConnection, st: StreamState, authority: str, deadline: float) -> None:
        self._waiting[st] = deadline
        if self._parked:   # parked only after IDLE_TICKS idle ticks (an empty lot's unpark_all: ~2.5 us)
            self._parked.unpark_all()
        try:
            await conn._answer(st, authority, deadline)
        finally:
            del self._waiting[st]

    async def run(self) -> None:
        idle = 0
        while True:
            if idle >= self.IDLE_TICKS:
                await self._parked.park()
                idle = 0
            await trio.sleep(max(min(self._timeout() / 8, 1.0), 0.001))
            if not self._waiting:
                idle += 1
                continue
            idle = 0
            now = trio.current_time()
            for st in [st for st, deadline in self._waiting.items() if deadline <= now]:
                st.notify()


class HboneClientPool:
    """`async with HboneClientPool(ssl_context_for) as pool: stream = await pool.connect(...)`."""

    def __init__(self, ssl_context_for: Callable[[str], ssl.SSLContext],
                 socket_factory: SocketFactory | None = None, *, idle_timeout: float = 60.0,
                 connect_timeout: float = 10.0, open_timeout: float = 10.0, limits: Limits = DEFAULT_LIMITS) -> None:
        self._ssl_context_for = ssl_context_for
        self.limits = limits   # what a server may make us do (`limits.Limits`), as on the server side
        self._socket_factory = socket_factory
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.open_timeout = open_timeout
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._locks: dict[PoolKey, trio.Lock] = {}
        self._answers = _Answers(lambda: self.open_timeout)
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None
        self.connections_opened = 0
        self.connections_failed = 0

    async def __aenter__(self) -> "HboneClientPool":
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._nursery.start_soon(self._reap_idle)
        self._nursery.start_soon(self._answers.run)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conns in list(self._conns.values()):
            for conn in list(conns):
                await conn.mux.aclose("HBONE client pool shutting down")
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        await self._stack.__aexit__(*exc)

    def connections(self) -> list[HboneConnection]:
        return [conn for conns in self._conns.values() for conn in conns]

    async def connect(self, address: tuple[str, int], authority: str, expected_identity: str | None,
                      source_identity: str, socket_factory: SocketFactory | None = None,
                      headers: Sequence[tuple[str, str]] = (), source_address: str = "") -> HboneStream:
        """Open one tunnel to `authority` through the ztunnel at `address`; raise HboneError with advice."""
        try:
            c.parse_authority(authority)
        except ValueError as e:
            raise LocalProtocolError(str(e)) from None
        if self._nursery is None:
            raise LocalProtocolError("use HboneClientPool as `async with` before connect()")
        address = (str(address[0]), int(address[1]))
        key: PoolKey = (source_identity, expected_identity or "", address, source_address)
        for attempt in (1, 2):
            # A usable connection is taken without the lock (nothing awaits in between);
            # the lock, two scheduler trips, only serialises establishing a new one.
            conn = next((x for x in self._conns.get(key, ()) if x.usable), None)
            if conn is None:
                async with self._locks.setdefault(key, trio.Lock()):
                    conn = next((x for x in self._conns.get(key, ()) if x.usable), None)
                    if conn is None:
                        conn = await self._establish(key, address, expected_identity, socket_factory)
            conn.active += 1
            try:
                return await conn.open_tunnel(authority, headers, self.open_timeout, self._answers)
            except _NoRoom:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _establish(self, key: PoolKey, address: tuple[str, int], expected_identity: str | None,
                         socket_factory: SocketFactory | None) -> HboneConnection:
        try:
            ctx = self._ssl_context_for(key[0])
            conn = await HboneConnection.establish(address, ctx, key, expected_identity,
                                                   socket_factory or self._socket_factory, self.connect_timeout,
                                                   self.limits)
        except HboneError:
            self.connections_failed += 1
            raise
        self.connections_opened += 1
        self._conns.setdefault(key, []).append(conn)
        assert self._nursery is not None
        self._nursery.start_soon(self._run, conn)
        return conn

    async def _run(self, conn: HboneConnection) -> None:
        try:
            await conn.mux.run()
        except Exception:   # one bad connection must not take the pool (and ztunnel) down
            log.exception("hbone: connection to %s failed unexpectedly", conn.mux.peer)
        finally:
            conns = self._conns.get(conn.key, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._conns.pop(conn.key, None)
            log.debug("hbone: connection to %s ended: %s", conn.mux.peer, conn.mux.broken)

    async def _reap_idle(self) -> None:
        while True:
            await trio.sleep(max(min(self.idle_timeout / 4, 5.0), 0.01))
            now = trio.current_time()
            for conn in self.connections():
                if conn.active == 0 and now - conn.idle_since >= self.idle_timeout:
                    await conn.mux.aclose("idle")
