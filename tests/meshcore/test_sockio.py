"""meshcore.sockio over real sockets: the Reader waits only when needed and yields fairly; connect."""
import socket

import pytest
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


async def test_connect_to_a_local_listener_and_to_a_closed_port():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        # answered within connect() itself (a local peer): connected without waiting, NODELAY set
        sock = await sockio.connect(socket.socket(), listener.getsockname(), timeout=5)
        assert sock.getpeername() == listener.getsockname()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer, _ = listener.accept()
        sock.sendall(b"x")
        assert peer.recv(1) == b"x"
        peer.close()
        sock.close()
        port = listener.getsockname()[1]
    finally:
        listener.close()
    closed = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        await sockio.connect(closed, ("127.0.0.1", port), timeout=5)
    assert closed.fileno() == -1, "connect() owns the socket: closed on failure"
