"""Socket reads and writes for the HTTP/1.1 hot path with less of trio's per-call machinery.

trio's `SocketStream.send_all` yields to the scheduler after every successful send, and
`receive_some` first tries a recv that fails with EAGAIN when the peer has not answered yet
(the usual case for a proxy), then waits, then receives again: per proxied request, four
scheduler round trips and two failed system calls. Here a write that the kernel takes
whole returns at once (the task still yields at its next read, which waits for the peer),
and a read waits for readability first, then reads once.

Only for a plain `trio.SocketStream` used by one task per direction (HTTP/1.1 on TCP);
anything else (HBONE tunnels, TLS) keeps its own stream, which has the same two methods.
"""
from __future__ import annotations

import errno
import os

import trio


class RawSocket:
    __slots__ = ("stream", "sock")

    def __init__(self, stream: trio.SocketStream):
        self.stream, self.sock = stream, stream.socket

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            fd = self.sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _broken(exc) from exc

    async def send_all(self, data: bytes) -> None:
        fd = self.sock.fileno()
        sent = 0
        if fd >= 0 and not self.sock.did_shutdown_SHUT_WR:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _broken(exc) from exc
            if sent == len(data):
                return
        await self.stream.send_all(memoryview(data)[sent:])   # the kernel's buffer is full: wait properly


def _broken(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc}")


def fast(stream: trio.abc.Stream):
    """The object to read and write `stream` with on the hot path."""
    return RawSocket(stream) if type(stream) is trio.SocketStream else stream
