"""Real loopback TCP connections for relay tests (tests/ is on sys.path via its conftest)."""
from __future__ import annotations

import socket

from meshcore import sockio


def tcp_pair(buffer_size: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A real loopback TCP connection (connecting side, accepted side), both non-blocking;
    with `buffer_size`, small socket buffers so that a few MiB fill them."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
        if buffer_size is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
    return a, b


async def read_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            await sockio.wait_readable(sock)
            continue
        if not chunk:
            return bytes(got)
        got += chunk
