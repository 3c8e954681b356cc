"""meshcore.tlssock.TlsSocket over real loopback TCP with real certificates: batches of
records leave in one write(), records already read come out without waiting on the
socket, and a full socket holds writes back without losing a byte."""
from __future__ import annotations

import select
import ssl
import socket

import pytest
import trio

from meshcore import tlssock
from meshcore.tlssock import TlsSocket

from .certs import client_ctx, server_ctx


async def _pair(client_bundle, server_bundle) -> tuple[TlsSocket, TlsSocket]:
    ln = socket.create_server(("127.0.0.1", 0))
    raw_c = socket.create_connection(ln.getsockname())
    raw_s, _ = ln.accept()
    ln.close()
    c = TlsSocket(raw_c, client_ctx(client_bundle), server_side=False)
    s = TlsSocket(raw_s, server_ctx(server_bundle), server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(c.do_handshake)
            n.start_soon(s.do_handshake)
    return c, s


async def test_records_already_read_come_out_without_a_socket_wait(client_bundle, server_bundle):
    c, s = await _pair(client_bundle, server_bundle)
    try:
        msgs = [f"record-{i:03d};".encode() for i in range(40)]
        for m in msgs:                       # one TLS record each, all in flight at once
            assert c.send_nowait(m) == len(m)
        await trio.sleep(0.05)               # all of them are in the server's socket now
        with trio.fail_after(2):
            got = await s.receive_some(100)  # less than there is: records stay in OpenSSL
        # One read() took everything: the kernel holds nothing, OpenSSL holds the rest ...
        assert select.select([s.sock], [], [], 0)[0] == []
        assert len(got) == 100
        with trio.fail_after(2):             # ... which must come out without a socket wait
            while len(got) < sum(map(len, msgs)):
                got += await s.receive_some()
        assert got == b"".join(msgs)
        # Replies flow the other way too, and EOF still arrives.
        await s.send_all(b"bye")
        with trio.fail_after(2):
            assert await c.receive_some() == b"bye"
        s.close()
        with trio.fail_after(2):
            assert await c.receive_some() == b""
    finally:
        c.close()
        s.close()


class CountingSocket:
    """The real socket, with its send() calls counted."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self.sends = sock, 0

    def send(self, data) -> int:
        self.sends += 1
        return self._sock.send(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


async def test_a_batch_of_records_leaves_in_one_write(client_bundle, server_bundle):
    """64 KiB is four TLS records; they go to the kernel in one send(), not four."""
    c, s = await _pair(client_bundle, server_bundle)
    try:
        counting = c.sock = CountingSocket(c.sock)
        payload = bytes(range(256)) * 256
        assert c.send_nowait(payload) == len(payload)
        assert counting.sends == 1 and not c.pending
        got = bytearray()
        with trio.fail_after(2):
            while len(got) < len(payload):
                got += await s.receive_some()
        assert got == payload
    finally:
        c.close()
        s.close()


async def test_large_writes_wait_for_the_socket_and_lose_nothing(client_bundle, server_bundle):
    """Writes to a reader that has stopped: the socket fills, ciphertext waits in the
    TlsSocket (`pending`) and nothing more is taken until it left; once the reader
    reads, every byte arrives in order."""
    c, s = await _pair(client_bundle, server_bundle)
    try:
        payload = bytes(range(256)) * (128 * 1024)         # 32 MiB, far over the socket buffers
        view, sent = memoryview(payload), 0
        while True:                                         # nobody reads: it must stop taking
            k = c.send_nowait(view[sent:])
            assert k <= tlssock.MAX_BATCH
            if not k:
                break
            sent += k
        assert c.pending and sent < len(payload)
        assert c.send_nowait(view[sent:]) == 0              # still full: still nothing taken
        got = bytearray()

        async def reader():
            while len(got) < len(payload):
                got.extend(await s.receive_some())

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(reader)
                while sent < len(payload):
                    k = c.send_nowait(view[sent:])
                    if k:
                        sent += k
                    else:
                        await c.wait_writable()
                await c.send_all(b"")                       # and the last ciphertext leaves
        assert got == payload
    finally:
        c.close()
        s.close()


async def test_a_corrupt_record_after_good_ones_fails_after_they_are_delivered(client_bundle, server_bundle):
    """Both arrive in one read(): the good bytes come out first, then the error (with the
    ssl error as its cause, for describe_tls_failure)."""
    c, s = await _pair(client_bundle, server_bundle)
    try:
        assert c.send_nowait(b"good bytes") == 10
        c.sock.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)   # application data that fails to authenticate
        await trio.sleep(0.05)
        with trio.fail_after(2):
            assert await s.receive_some() == b"good bytes"
            with pytest.raises(trio.BrokenResourceError) as info:
                await s.receive_some()
        assert isinstance(info.value.__cause__, ssl.SSLError)
        assert "TLS read failed" in str(info.value)
    finally:
        c.close()
        s.close()
