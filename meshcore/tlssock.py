"""TLS on a non-blocking socket over OpenSSL memory BIOs, driven by trio's I/O waits.

OpenSSL writing the socket itself (`ssl.SSLSocket`) issues one write() per TLS record:
a 64 KiB batch of tunnel DATA left as four 16 KiB writes, and each write() pays the
whole trip through TCP, the veth pair and the peer's receive path, which was two thirds
of the sending ztunnel's CPU in a bulk transfer. Here OpenSSL encrypts into a memory
BIO and the batch leaves in one write(), which the kernel sends as one large segment;
on the way in, one read() takes whatever the socket holds and every whole record in it
is decrypted in the same call. `trio.SSLStream` works the same way but moves every
record through a general-purpose retry loop with locks; this is the narrow version the
HBONE connection needs (one reader task, one writer at a time).

A send never blocks inside OpenSSL: `send_nowait` encrypts what it is given (up to
`MAX_BATCH`) and keeps the ciphertext the socket did not take (`pending`); while any is
left it takes nothing more and returns 0, so the caller waits (`wait_writable`) and
calls again, which `Mux` does. Errors surface as trio.BrokenResourceError with the
ssl error as `__cause__`, as trio.SSLStream does, so `describe_tls_failure` applies.
"""
from __future__ import annotations

import socket
import ssl

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable, wait_writable

READ_SIZE = 256 * 1024
MAX_BATCH = 1024 * 1024   # plaintext one send_nowait encrypts (above what Mux queues: HIGH_WATER + one read)
# One read buffer for every TlsSocket: a read is copied into OpenSSL's BIO before anything
# else runs (trio runs one task at a time on the one thread that uses these sockets).
_RBUF = bytearray(READ_SIZE)
_RVIEW = memoryview(_RBUF)
_DVIEW = memoryview(bytearray(READ_SIZE))   # decrypted plaintext (`receive_view`), shared the same way


class TlsSocket(trio.abc.Stream):
    def __init__(self, raw: socket.socket, context: ssl.SSLContext, *, server_side: bool) -> None:
        """Takes ownership of `raw`: it is closed if wrapping fails."""
        try:
            raw.setblocking(False)
            self.sock = raw
            self._rbio, self._wbio = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = context.wrap_bio(self._rbio, self._wbio, server_side=server_side)
        except BaseException:
            raw.close()
            raise
        self._pending: bytes | memoryview = b""   # ciphertext the socket has not taken yet
        self._read_error: trio.BrokenResourceError | None = None   # after the bytes before it
        self._eof = False
        self._closed = False

    # -- handshake and peer facts
    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush_all()
                await self._fill("TLS handshake failed")
            except (ssl.SSLError, OSError) as e:
                self._send_alert()
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
        await self._flush_all()

    def _send_alert(self) -> None:
        """Best effort: the alert OpenSSL queued tells the peer why."""
        try:
            self._write_output()
        except OSError:
            pass

    async def _fill(self, what: str) -> None:
        """One read() of whatever the socket holds into OpenSSL's input."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("TLS socket was closed")
            try:
                n = self.sock.recv_into(_RBUF)
            except BlockingIOError:
                await wait_readable(self.sock)
                continue
            except OSError as e:
                raise trio.BrokenResourceError(f"{what}: {e}") from e
            if n:
                self._rbio.write(_RVIEW[:n])
            else:
                self._rbio.write_eof()
            return

    async def _flush_all(self) -> None:
        done = self._write_output()
        while not done:
            await self.wait_writable()
            done = self._write_pending()

    def selected_alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False):
        return self._tls.getpeercert(binary_form=binary_form)

    def getpeername(self):
        return self.sock.getpeername()

    # -- sending
    def _write_output(self) -> bool:
        """Move what OpenSSL wrote into its BIO behind the pending ciphertext, and write
        what the socket takes; True once nothing is pending. OSError propagates."""
        data = self._wbio.read()
        if data:
            self._pending = bytes(self._pending) + data if self._pending else data
        return self._write_pending()

    def _write_pending(self) -> bool:
        """Write pending ciphertext; True once none is left. OSError propagates."""
        view = self._pending
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                break
            view = memoryview(view)[n:] if n < len(view) else b""
        self._pending = view
        return not view

    @property
    def pending(self) -> bool:
        """Ciphertext is waiting for the socket (`wait_writable`, then `send_nowait`)."""
        return bool(self._pending)

    def send_nowait(self, data) -> int:
        """Encrypt and write; returns how much of `data` was taken (all of it, or 0 while
        earlier ciphertext still waits for the socket). Every record of one call leaves
        in one write(), so the kernel sends a batch as one large segment. `data` may be a
        list of buffers (`Mux`'s queue): each is encrypted where it lies, no joining copy.
        At most MAX_BATCH is taken per call."""
        if self._closed:
            raise trio.ClosedResourceError("TLS socket was closed")
        try:
            if self._pending and not self._write_pending():
                return 0
            taken = 0
            for chunk in data if type(data) is list else (data,):
                if not chunk:
                    continue
                room = MAX_BATCH - taken
                taken += self._tls.write(chunk if len(chunk) <= room else memoryview(chunk)[:room])
                if taken >= MAX_BATCH:
                    break
            if taken:
                self._write_output()
            return taken
        except (ssl.SSLError, OSError, ValueError) as e:
            raise trio.BrokenResourceError(f"TLS write failed: {e}") from e

    async def wait_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS socket was closed")
        await wait_writable(self.sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view:
            await checkpoint()
        while view:
            n = self.send_nowait(view)
            if n:
                view = view[n:]
            else:
                await self.wait_writable()
        while self._pending:
            await self.wait_writable()
            self.send_nowait(b"")

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_writable()

    # -- receiving
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` of plaintext: every whole record already read, at least one."""
        return bytes(await self.receive_view(max_bytes))

    async def receive_view(self, max_bytes: int | None = None) -> memoryview:
        """`receive_some` without a copy: the plaintext is decrypted into one buffer shared by
        every TlsSocket, and the view is valid only until the next `receive_view` call on any
        of them (trio runs one task at a time: the caller uses it before it awaits again, and
        copies what it keeps). Every record is decrypted straight into place, so a read of
        many records costs no allocation per record and no join."""
        limit = min(max_bytes or READ_SIZE, READ_SIZE)
        tls, rbio, view = self._tls, self._rbio, _DVIEW
        while True:
            if self._closed:
                raise trio.ClosedResourceError("TLS socket was closed")
            if self._read_error is not None:
                raise self._read_error
            if self._eof:
                return view[:0]
            got = 0
            try:
                while got < limit and (rbio.pending or tls.pending() or rbio.eof):
                    n = tls.read(limit - got, view[got:])
                    if not n:
                        self._eof = True
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass   # part of a record: the rest is still on its way
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a bare TCP EOF: HTTP/2 framing shows a truncation
                self._eof = True
            except ssl.SSLError as e:
                err = trio.BrokenResourceError(f"TLS read failed: {e}")
                err.__cause__ = e
                if not got:
                    raise err
                self._read_error = err   # raised on the next call, after these bytes
            if self._wbio.pending:   # a reply to a post-handshake message (key update)
                try:
                    self._write_output()
                except OSError as e:
                    raise trio.BrokenResourceError(f"TLS write failed: {e}") from e
            if got or self._eof:
                return view[:got]
            await self._fill("TLS read failed")

    # -- closing
    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.sock.fileno() >= 0:
                notify_closing(self.sock)
            self.sock.close()
