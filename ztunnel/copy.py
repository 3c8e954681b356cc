"""Bidirectional byte copy between two trio streams, propagating half-close.

Each direction ends on EOF by half-closing the other side (so request/response
protocols that rely on shutdown(SHUT_WR) keep working through the tunnel); a broken
side ends both directions. Counts survive cancellation for metrics and access logs.
"""
from __future__ import annotations

from dataclasses import dataclass

import trio

CHUNK = 256 * 1024


@dataclass
class Transfer:
    sent: int = 0       # bytes from `a` delivered to `b`
    received: int = 0   # bytes from `b` delivered to `a`
    error: str | None = None


async def _half_close(stream: trio.abc.Stream) -> None:
    send_eof = getattr(stream, "send_eof", None)
    try:
        if send_eof is not None:
            await send_eof()
        else:
            await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, transfer: Transfer, attr: str,
                cancel: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                break
            await dst.send_all(data)
            setattr(transfer, attr, getattr(transfer, attr) + len(data))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        transfer.error = transfer.error or f"{'upstream' if attr == 'received' else 'downstream'} reset: {exc or type(exc).__name__}"
        cancel.cancel()
        return
    await _half_close(dst)


async def copy_bidirectional(a: trio.abc.Stream, b: trio.abc.Stream, transfer: Transfer | None = None) -> Transfer:
    """Copy a->b and b->a until both directions reached EOF or one side broke.

    The caller owns (and closes) both streams."""
    transfer = transfer or Transfer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, a, b, transfer, "sent", nursery.cancel_scope)
        nursery.start_soon(_pump, b, a, transfer, "received", nursery.cancel_scope)
    return transfer
