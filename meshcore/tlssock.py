"""TLS on a non-blocking `ssl.SSLSocket`, driven by trio's I/O waits.

`trio.SSLStream` runs OpenSSL over memory BIOs and moves every record through Python
(a lock, a retry loop, a transport send) — several microseconds per call, which
dominated HBONE's profile. Here OpenSSL reads and writes the socket itself: a send is
one C call that encrypts and writes, a receive one C call per record, and trio is asked
to wait only when OpenSSL reports WANT_READ/WANT_WRITE.

One task may receive while another sends (OpenSSL allows interleaving SSL_read and
SSL_write on one thread). A send that would block must be retried with the same bytes
(OpenSSL has part of a record in flight): `send_nowait` returns 0 and the caller keeps
the bytes queued, which `Mux` does. Errors surface as trio.BrokenResourceError with the
ssl error as `__cause__`, as trio.SSLStream does, so `describe_tls_failure` applies.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket
import ssl

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable, wait_writable

log = logging.getLogger("meshcore.tlssock")
READ_SIZE = 256 * 1024
FULL_RECORD = 16 * 1024   # TLS's largest plaintext record: one SSL_read returns at most this


def _libssl():
    """The libssl the interpreter's `_ssl` uses, for the one control Python does not expose."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            return None   # not the library _ssl linked: leave contexts alone
        return lib
    except (OSError, AttributeError):
        return None


_LIBSSL = _libssl()
_CTRL_GET_READ_AHEAD, _CTRL_SET_READ_AHEAD = 40, 41


def enable_read_ahead(context: ssl.SSLContext) -> bool:
    """SSL_CTX_set_read_ahead(ctx, 1): OpenSSL then reads whatever the socket holds in one
    read() instead of a 5-byte record header and then the body, one syscall per record
    saved. Python's ssl has no switch for it; the SSL_CTX pointer follows the object
    header in CPython's PySSLContext, and is used only once it proves to be the context
    (its options match). Returns whether read-ahead is on."""
    if _LIBSSL is None:
        return False
    done = getattr(context, "_trellis_read_ahead", None)
    if done is not None:   # decided for this context already, either way
        return done
    ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not ptr or _LIBSSL.SSL_CTX_get_options(ptr) != int(context.options):
        log.debug("tlssock: SSL_CTX not where expected; read-ahead stays off")
        on = False
    else:
        _LIBSSL.SSL_CTX_ctrl(ptr, _CTRL_SET_READ_AHEAD, 1, None)
        on = _LIBSSL.SSL_CTX_ctrl(ptr, _CTRL_GET_READ_AHEAD, 0, None) == 1
    context._trellis_read_ahead = on
    return on


class TlsSocket(trio.abc.Stream):
    def __init__(self, raw: socket.socket, context: ssl.SSLContext, *, server_side: bool) -> None:
        """Takes ownership of `raw`: it is closed if wrapping fails."""
        try:
            raw.setblocking(False)
            enable_read_ahead(context)
            self.ssl = context.wrap_socket(raw, server_side=server_side, do_handshake_on_connect=False,
                                           suppress_ragged_eofs=True)
        except BaseException:
            raw.close()
            raise
        self._eof = False
        self._closed = False

    # -- handshake and peer facts
    async def do_handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                return
            except ssl.SSLWantReadError:
                await wait_readable(self.ssl)
            except ssl.SSLWantWriteError:
                await wait_writable(self.ssl)
            except (ssl.SSLError, OSError) as e:
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e

    def selected_alpn_protocol(self) -> str | None:
        return self.ssl.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False):
        return self.ssl.getpeercert(binary_form=binary_form)

    def getpeername(self):
        return self.ssl.getpeername()

    # -- sending
    def send_nowait(self, data) -> int:
        """Encrypt and write what the socket takes now; 0 means retry the same bytes later."""
        if self._closed:
            raise trio.ClosedResourceError("TLS socket was closed")
        try:
            return self.ssl.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError, ValueError) as e:
            raise trio.BrokenResourceError(f"TLS write failed: {e}") from e

    async def wait_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS socket was closed")
        await wait_writable(self.ssl)

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

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_writable()

    # -- receiving
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` of plaintext: every whole record already readable, at least one."""
        limit = max_bytes or READ_SIZE
        while True:
            if self._closed:
                raise trio.ClosedResourceError("TLS socket was closed")
            if self._eof:
                return b""
            try:
                # Ask for one record, not `limit`: recv(n) allocates n bytes first, and
                # large allocations cost more than the read (see sockio.READ_SIZE).
                data = self.ssl.recv(min(limit, FULL_RECORD))
                break
            except ssl.SSLWantReadError:
                await wait_readable(self.ssl)
            except ssl.SSLWantWriteError:
                await wait_writable(self.ssl)
            except (ssl.SSLError, OSError, ValueError) as e:
                raise trio.BrokenResourceError(f"TLS read failed: {e}") from e
        if not data:
            self._eof = True
            return b""
        # One SSL_read returns one record. After a full-size record (bulk) gather the rest
        # that is already here, so the HTTP/2 parser runs once per batch rather than once
        # per 16 KiB; after a short one (request/response) skip the likely-EAGAIN retry.
        if FULL_RECORD <= len(data) < limit:
            parts = [data]
            got = len(data)
            while got < limit:
                try:
                    more = self.ssl.recv(min(limit - got, FULL_RECORD))
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except (ssl.SSLError, OSError, ValueError):
                    break   # reported on the next call, after these bytes are delivered
                if not more:
                    self._eof = True
                    break
                parts.append(more)
                got += len(more)
            if len(parts) > 1:
                data = b"".join(parts)
        return data

    # -- closing
    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.ssl.fileno() >= 0:
                notify_closing(self.ssl)
            self.ssl.close()
