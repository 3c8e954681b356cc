"""waypoint.fastio over real sockets: whole and partial writes (the kernel buffer fills and
the write waits for the reader), reads, EOF, and errors as trio's stream errors."""
import os

import pytest
import trio

from waypoint.fastio import RawSocket, fast


def pair():
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_writes_larger_than_the_socket_buffer_arrive_whole_and_in_order():
    a, b = pair()
    ra, rb = fast(a), fast(b)
    assert isinstance(ra, RawSocket) and fast(trio.testing.MemorySendStream()) is not None
    data = os.urandom(8 * 1024 * 1024)   # far over the socket buffer: the partial-write path
    got = bytearray()
    async with trio.open_nursery() as n:
        async def reader():
            while len(got) < len(data):
                got.extend(await rb.receive_some(65536))
        n.start_soon(reader)
        await ra.send_all(data)
    await ra.send_all(b"tail")
    got.extend(await rb.receive_some(65536))
    assert bytes(got) == data + b"tail"
    await a.aclose()
    assert await rb.receive_some(10) == b""   # EOF


async def test_errors_are_stream_errors():
    a, b = pair()
    ra, rb = fast(a), fast(b)
    await b.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await rb.receive_some(10)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):   # the peer is gone: EPIPE (or ECONNRESET) soon
            await ra.send_all(b"x" * 65536)
    await a.aclose()
