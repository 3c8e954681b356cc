"""meshcore.sockio.Reader over a real socket pair: waits only when needed, yields fairly."""
import socket

import trio
import trio.testing

from meshcore import sockio


async def test_reader_yields_every_fair_rounds_full_reads_and_returns_eof():
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    size = 1024
    a.sendall(b"x" * size * (sockio.FAIR_ROUNDS + 1) + b"tail")
    reader = sockio.Reader(b, size)
    for _ in range(sockio.FAIR_ROUNDS - 1):
        with trio.testing.assert_no_checkpoints():   # a busy socket costs no scheduler trip
            assert await reader.read() == b"x" * size
    with trio.testing.assert_checkpoints():           # ... until it is another task's turn
        assert await reader.read() == b"x" * size
    assert await reader.read() == b"x" * size
    assert await reader.read() == b"tail"             # short read: the next call waits first
    a.close()
    with trio.fail_after(5):
        assert await reader.read() == b""
    b.close()
