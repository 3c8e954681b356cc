"""meshcore.tlssock.TlsSocket over real loopback TCP with real certificates: read-ahead
is on, and records OpenSSL already holds are delivered without waiting on the socket."""
from __future__ import annotations

import ctypes
import select
import socket

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


def test_read_ahead_is_on_in_the_contexts_tls_sockets_use(client_bundle, server_bundle):
    lib = tlssock._LIBSSL
    assert lib is not None, "libssl matching ssl.OPENSSL_VERSION_NUMBER not found"
    for ctx in (client_ctx(client_bundle), server_ctx(server_bundle)):
        assert tlssock.enable_read_ahead(ctx)
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        assert lib.SSL_CTX_ctrl(ptr, tlssock._CTRL_GET_READ_AHEAD, 0, None) == 1


async def test_records_openssl_read_ahead_are_delivered_without_a_socket_wait(client_bundle, server_bundle):
    c, s = await _pair(client_bundle, server_bundle)
    try:
        msgs = [f"record-{i:03d};".encode() for i in range(40)]
        for m in msgs:                       # one TLS record each, all in flight at once
            assert c.send_nowait(m) == len(m)
        await trio.sleep(0.05)               # all of them are in the server's socket now
        with trio.fail_after(2):
            got = await s.receive_some()
        # One read() took everything: the kernel holds nothing, OpenSSL holds the rest ...
        assert select.select([s.ssl], [], [], 0)[0] == []
        assert len(got) < sum(map(len, msgs))
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


async def test_large_writes_resume_after_would_block_with_the_same_bytes(client_bundle, server_bundle):
    """A multi-record write to a reader that has stopped: it would block, and retrying
    the same bytes later (OpenSSL's contract, which Mux's output queue keeps) delivers
    every byte in order."""
    c, s = await _pair(client_bundle, server_bundle)
    try:
        payload = bytes(range(256)) * (128 * 1024)         # 32 MiB, far over the socket buffers
        view, sent = memoryview(payload), 0
        assert c.send_nowait(view) == 0                     # nobody reads: it cannot all go
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
        assert got == payload
    finally:
        c.close()
        s.close()
