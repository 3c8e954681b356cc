"""The data plane's side of the control-plane API: certificate signing and the resumable
watch. When the control plane is away, the last snapshot stays in force and the client
says so (`connected`, `last_contact`, `last_error`) while it reconnects with backoff."""
from __future__ import annotations

import dataclasses
import errno
import inspect
import logging
import random
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import sockio, tls
from .identity import CertBundle, controlplane_identity, trust_domain_of
from .jsonlines import FramingError, LineReader
from .resources import Resource, ResourceInvalid, from_dict
from .wire import WireError, watch

log = logging.getLogger("trellis.cpclient")
CONNECT_TIMEOUT = 5.0
SILENCE_TIMEOUT = 35.0  # the server pings every 10 s
MIN_BACKOFF, MAX_BACKOFF = 0.2, 10.0


class ControlPlaneError(RuntimeError):
    pass


class CredentialError(ValueError):
    pass


CREDENTIAL_FILES = ("bootstrap.key", "bootstrap.crt", "roots.pem")


def load_credential(directory) -> CertBundle:
    """A node's bootstrap credential (bootstrap.key, bootstrap.crt, roots.pem), as written by
    `python -m controlplane --issue-node-credential` (the lab does it at `trellis lab up`)."""
    from pathlib import Path
    from .identity import split_pem_chain
    paths = {n: Path(directory) / n for n in CREDENTIAL_FILES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise CredentialError(f"node credential incomplete, missing {', '.join(missing)}; the lab writes them "
                              f"at `trellis lab up` (or pass the right --credential-dir)")
    try:
        return CertBundle(paths["bootstrap.key"].read_bytes(),
                          tuple(split_pem_chain(paths["bootstrap.crt"].read_bytes())),
                          tuple(split_pem_chain(paths["roots.pem"].read_bytes())))
    except ValueError as exc:
        raise CredentialError(f"cannot read the node credential in {directory}: {exc}; re-issue it") from None


class ControlPlaneClient:
    """`credential`: the caller's certificate (a node's, or a waypoint's workload
    certificate); or None in a cluster, where a node sends its ServiceAccount token from
    `token_file` (re-read at each request: the kubelet rotates it) and verifies the control
    plane with `roots` of `trust_domain`. `node`: the subscriber's name (a node, or a
    waypoint's "<ns>/<name>" with `subscriber=watch.WAYPOINT`)."""

    def __init__(self, address: tuple[str, int], credential: CertBundle | Callable[[], CertBundle] | None, node: str, *,
                 socket_factory: Callable[[int], socket.socket] | None = None, subscriber: str = watch.NODE,
                 token_file=None, roots: bytes = b"", trust_domain: str = "cluster.local"):
        self.address, self.node, self.socket_factory = address, node, socket_factory
        self.subscriber = subscriber
        self._credential = credential
        self.token_file, self.roots, self.trust_domain = token_file, roots, trust_domain
        self.connected = False
        self.last_contact: float | None = None   # time.time() of the last message
        self.last_error: str | None = None
        self.version: int | None = None
        self.resources: dict[tuple, Resource] = {}

    # -- plumbing ------------------------------------------------------------------------
    def credential(self) -> CertBundle | None:
        return self._credential() if callable(self._credential) else self._credential

    def _request(self, msg: watch.Request) -> bytes:
        if self.token_file is not None:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ControlPlaneError(f"cannot read the ServiceAccount token {self.token_file}: {exc.strerror}; "
                                        "is the projected token volume mounted?") from None
            msg = dataclasses.replace(msg, token=token)
        return watch.encode(msg)

    def _expected_server(self, bundle: CertBundle | None) -> str:
        if bundle is None:
            return controlplane_identity(self.trust_domain)
        return controlplane_identity(trust_domain_of(bundle.identity))

    async def _connect(self) -> trio.SSLStream:
        host, port = self.address
        where = f"control plane {host}:{port}"
        bundle = self.credential()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if self.socket_factory:
                    sock = trio.socket.from_stdlib_socket(self.socket_factory(sockio.family_of(host)))
                    try:
                        await sock.connect((host, port))
                    except BaseException:
                        sock.close()
                        raise
                    tcp = trio.SocketStream(sock)
                else:
                    tcp = await trio.open_tcp_stream(host, port)
                ctx = tls.client_context(bundle, alpn=["trellis-cp"]) if bundle is not None else \
                    tls.roots_client_context(self.roots, alpn=["trellis-cp"])
                stream = trio.SSLStream(tcp, ctx, server_hostname=None)
                await stream.do_handshake()
        except trio.TooSlowError:
            raise ControlPlaneError(f"connection to {where} timed out; is it running and reachable from this node?") from None
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            # trio wraps handshake failures: the SSL error is the cause
            cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            reason = getattr(cause, "reason", None) or str(cause) or "connection closed during the handshake"
            raise ControlPlaneError(f"TLS with {where} failed ({reason}); do the node credential and the "
                                    "control plane come from the same mesh CA?") from None
        except OSError as exc:
            raise ControlPlaneError(f"cannot reach {where}: {exc.strerror or exc}") from None
        tls.verify_peer_identity(stream, self._expected_server(bundle), where)
        return stream

    # -- sign ----------------------------------------------------------------------------
    async def sign(self, csr_pem: bytes | str) -> tuple[list[bytes], list[bytes]]:
        stream = await self._connect()
        try:
            csr = csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem
            await stream.send_all(self._request(watch.SignRequest(csr)))
            with trio.fail_after(30):
                obj = await LineReader(stream).read()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            # TLS 1.3: the client's handshake ends before the server has checked the client's
            # certificate, so a refused credential shows up here, on the first read or write
            raise ControlPlaneError(f"{self._explain(exc)}; if this repeats, the control plane refuses this "
                                    "node credential: do it and the control plane come from the same mesh CA?") from None
        finally:
            await trio.aclose_forcefully(stream)
        try:
            reply = watch.parse_sign_reply(obj) if obj else watch.ErrorReply("no answer")
        except WireError as exc:
            raise ControlPlaneError(f"control plane sent a bad sign reply: {exc}") from None
        if isinstance(reply, watch.ErrorReply):
            raise ControlPlaneError(f"control plane refused to sign: {reply.error}")
        return [c.encode() for c in reply.chain], [r.encode() for r in reply.roots]

    # -- watch ---------------------------------------------------------------------------
    async def watch(self, on_update: Callable[[dict, int], Awaitable[None] | None], *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run forever: connect, apply snapshot/deltas, call on_update(resources, version);
        reconnect with jittered backoff, resuming from the last version applied."""
        started, backoff = False, MIN_BACKOFF
        while True:
            try:
                stream = await self._connect()
                try:
                    await stream.send_all(self._request(watch.WatchRequest(self.subscriber, self.node, self.version)))
                    reader = LineReader(stream)
                    while True:
                        with trio.fail_after(SILENCE_TIMEOUT):
                            msg = await reader.read()
                        if msg is None:
                            raise ControlPlaneError("control plane closed the watch")
                        try:
                            event = watch.parse_event(msg)
                        except WireError as exc:
                            raise FramingError(str(exc)) from None
                        if isinstance(event, watch.ErrorReply):
                            raise ControlPlaneError(f"control plane refused the watch: {event.error}")
                        if not self.connected:
                            log.info("event=control_plane_connected address=%s:%d since=%s", *self.address, self.version)
                        self.connected, self.last_error, self.last_contact = True, None, time.time()
                        backoff = MIN_BACKOFF
                        if self._apply(event):
                            result = on_update(dict(self.resources), self.version)
                            if inspect.isawaitable(result):
                                await result
                        if not started:
                            started = True
                            task_status.started()
                finally:
                    await trio.aclose_forcefully(stream)
            except (ControlPlaneError, tls.IdentityMismatch, FramingError, trio.TooSlowError,
                    trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                error = self._explain(exc)
                if self.connected or error != self.last_error:
                    log.warning("event=control_plane_unreachable error=%r serving_version=%s retry_in=%.1fs",
                                error, self.version, backoff)
                self.connected, self.last_error = False, error
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _explain(self, exc: BaseException) -> str:
        """Advice for a lost watch, whatever the way it was lost: a server that stops can
        close cleanly (EOF), truncate TLS or reset the socket, depending on timing alone."""
        where = f"control plane {self.address[0]}:{self.address[1]}"
        if isinstance(exc, trio.TooSlowError):
            return f"{where} sent nothing for {SILENCE_TIMEOUT:.0f}s (it pings every 10s); is it overloaded or partitioned?"
        if isinstance(exc, (trio.BrokenResourceError, ssl.SSLError)) or (
                isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)):
            cause = exc.__cause__ or exc
            detail = str(cause) or type(cause).__name__
            return f"{where} closed the watch abruptly ({detail}); did it restart? reconnecting"
        return str(exc) or f"{where}: {type(exc).__name__}"

    def _apply(self, event: watch.Event) -> bool:
        if isinstance(event, watch.Ping):
            return False
        if isinstance(event, watch.Snapshot):
            self.resources = self._parse(event.resources)
        else:
            for key in event.deletes:
                self.resources.pop(key, None)
            self.resources.update(self._parse(event.upserts))
        self.version = event.version
        return True

    def _parse(self, items) -> dict[tuple, Resource]:
        out = {}
        for d in items:
            try:
                r = from_dict(d, source="control plane")
            except ResourceInvalid as exc:  # a newer control plane may know more kinds
                log.warning("event=resource_skipped error=%r", str(exc))
                continue
            out[r.key] = r
        return out

    def status(self) -> dict[str, Any]:
        return {"address": f"{self.address[0]}:{self.address[1]}", "connected": self.connected,
                "lastContact": self.last_contact, "version": self.version, "lastError": self.last_error}


async def keep_watching(client: "ControlPlaneClient", on_update, what: str) -> None:
    """Run `client.watch(on_update)` for ever: the client reconnects by itself, this only
    guards against it giving up (restarts with backoff, 1 s doubling to 30 s)."""
    backoff = 1.0
    while True:
        try:
            await client.watch(on_update)
        except Exception as exc:
            log.error("%s: control plane watch stopped (%s: %s); restarting in %.0fs, serving config version %s "
                      "meanwhile", what, type(exc).__name__, exc, backoff, client.version)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
