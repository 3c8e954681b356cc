"""Bidirectional relays for the data path, propagating half-close.

Two shapes, both on non-blocking stdlib sockets (`meshcore.sockio`):
- `relay_tunnel(sock, tunnel)`: a TCP socket <-> an HBONE tunnel (outbound: the app's
  connection <-> the tunnel to the destination; inbound: the tunnel <-> the app).
- `relay_sockets(a, b)`: TCP <-> TCP (outbound passthrough to unmeshed destinations).

Each direction ends on EOF by half-closing the other side (so request/response
protocols that rely on shutdown(SHUT_WR) keep working through the tunnel); a broken side
ends both directions, and a reset travels as a reset (RFC 9113 section 8.5, as Istio's
ztunnel does): a socket's RST becomes RST_STREAM(CONNECT_ERROR) on the tunnel
(`HboneStream.relay`) or an RST on the other socket, and a tunnel's RST_STREAM (or a
lost HBONE connection) an RST on the socket, so the caller sees ECONNRESET, not EOF.
Byte counts survive cancellation for metrics and access logs.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import trio

from meshcore import sockio
from meshcore.hbone.stream import HboneStream

CHUNK = sockio.READ_SIZE
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class Transfer:
    sent: int = 0       # bytes toward the destination
    received: int = 0   # bytes back from it
    error: str | None = None


def _why(exc: BaseException, sock_role: str) -> str:
    what = "tunnel broke" if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)) else f"{sock_role} reset"
    return f"{what}: {exc or type(exc).__name__}"


async def relay_tunnel(sock: socket.socket, tunnel: HboneStream, *, sock_role: str) -> Transfer:
    """sock <-> tunnel until both directions ended or one broke. Returned `sent` counts
    sock -> tunnel, `received` tunnel -> sock; the caller owns (and closes) both ends.
    One task: the tunnel's connection delivers into `sock` (`HboneStream.relay`)."""
    transfer = Transfer()
    try:
        await tunnel.relay(sock)
    except trio.BrokenResourceError as exc:   # the tunnel was reset or its connection lost
        sockio.reset_on_close(sock)
        transfer.error = _why(exc, sock_role)
    except _BROKEN as exc:
        transfer.error = _why(exc, sock_role)
    finally:
        transfer.sent, transfer.received = tunnel.bytes_sent, tunnel.bytes_received
    return transfer


async def _sock_to_sock(src: socket.socket, dst: socket.socket, transfer: Transfer, attr: str, role: str,
                        cancel: trio.CancelScope) -> None:
    reader = sockio.Reader(src, CHUNK)
    try:
        while data := await reader.read():
            await sockio.send_all(dst, data)
            setattr(transfer, attr, getattr(transfer, attr) + len(data))
        sockio.shutdown_write(dst)
    except _BROKEN as exc:
        if isinstance(exc, OSError):   # one side reset: reset both, not a clean close
            sockio.reset_on_close(src)
            sockio.reset_on_close(dst)
        transfer.error = transfer.error or _why(exc, role)
        cancel.cancel()


async def relay_sockets(a: socket.socket, b: socket.socket) -> Transfer:
    """a <-> b: `sent` counts a -> b, `received` b -> a; the caller owns (and closes) both."""
    transfer = Transfer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sock_to_sock, a, b, transfer, "sent", "downstream", nursery.cancel_scope)
        nursery.start_soon(_sock_to_sock, b, a, transfer, "received", "upstream", nursery.cancel_scope)
    return transfer
