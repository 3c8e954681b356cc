"""Non-blocking stdlib sockets driven by trio's I/O waits, for the proxy hot path.

trio's socket wrappers checkpoint (yield to the scheduler) before and after every
call, which is the right default and costs a few microseconds each; a proxy makes
several such calls per request per hop. Here a call is tried first and trio is asked
to wait only when the kernel says EAGAIN, so a busy connection moves bytes without a
trip through the scheduler. Callers that loop must checkpoint now and then themselves
(`Reader` does), so that one hot connection cannot starve the others.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable, wait_writable

FAIR_ROUNDS = 16   # calls a task may make without waiting before it yields anyway
# recv(n) allocates n bytes before the kernel fills them. At 128 KiB and above glibc
# serves that with mmap/munmap and fresh page faults: a 150-byte recv(256 KiB) costs
# 29 us against 4.5 us for recv(64 KiB) (measured here). 64 KiB also covers a bulk
# transfer's socket buffer drain in a handful of calls.
READ_SIZE = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


def detach(stream: trio.SocketStream) -> socket.socket:
    """Take the stdlib socket out of a trio SocketStream (the stream is then closed).
    trio.SocketStream already set TCP_NODELAY."""
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)
    return raw


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def connect(sock: socket.socket, address: tuple[str, int], timeout: float) -> socket.socket:
    """Non-blocking connect, then TCP_NODELAY (a proxy forwards what it has at once).

    Takes ownership of `sock`: on any failure it is closed, and trio.TooSlowError (after
    `timeout`) or OSError propagates for the caller to word as advice."""
    try:
        if sock.gettimeout() != 0.0:   # (made with SOCK_NONBLOCK: no ioctl to say it again)
            sock.setblocking(False)
        try:
            sock.connect(address)
        except BlockingIOError:
            # A local peer (ztunnel to the app in its pod) has answered the SYN within the
            # connect() call itself: then no epoll registration, cancel scope and trip
            # through the scheduler (getpeername says ENOTCONN while the SYN is out).
            if not _connected(sock):   # (connected: established, no error to ask for)
                with trio.fail_after(timeout):
                    await wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


async def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except BlockingIOError:
            await wait_writable(sock)
            continue
        view = view[n:]


def close(sock: socket.socket | None) -> None:
    """Close a socket other tasks may be waiting on (they get ClosedResourceError)."""
    if sock is None or sock.fileno() < 0:
        return
    notify_closing(sock)
    sock.close()


def close_unwatched(sock: socket.socket | None) -> None:
    """Close a socket no task can be waiting on any more (a proxy's own socket once its relay
    has ended: the relay machinery wakes its backlog writer when it detaches). trio's
    notify_closing costs an exception object and a failing epoll_ctl() for a socket trio
    never waited on, which is every new connection's."""
    if sock is not None:
        sock.close()


def reset_on_close(sock: socket.socket | None) -> None:
    """Make the next close() send an RST (SO_LINGER 0) instead of a FIN: how a proxy passes
    on a reset. A socket already gone needs nothing."""
    if sock is None or sock.fileno() < 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass


def shutdown_write(sock: socket.socket) -> None:
    """Half-close (FIN); a peer that already reset the connection is not an error here."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        if e.errno not in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
            raise


class Reader:
    """recv() for a relay loop: waits for readability only when needed (after EAGAIN, or
    after a short read, which most likely drained the socket: no recv that says EAGAIN),
    and yields to the scheduler every FAIR_ROUNDS full reads that did not wait."""
    __slots__ = ("sock", "size", "_wait", "_rounds")

    def __init__(self, sock: socket.socket, size: int = READ_SIZE) -> None:
        self.sock, self.size = sock, size
        self._wait = False
        self._rounds = 0

    async def read(self) -> bytes:
        """The next bytes, b"" at EOF; OSError (a reset) propagates."""
        while True:
            if self._wait:
                await wait_readable(self.sock)
                self._wait, self._rounds = False, 0
            try:
                data = self.sock.recv(self.size)
            except BlockingIOError:
                self._wait = True
                continue
            if len(data) < self.size:
                self._wait = True
            else:
                self._rounds += 1
                if self._rounds >= FAIR_ROUNDS:
                    self._rounds = 0
                    await checkpoint()
            return data


__all__ = ["detach", "family_of", "connect", "send_all", "close", "reset_on_close", "shutdown_write", "Reader",
           "wait_readable", "wait_writable"]
