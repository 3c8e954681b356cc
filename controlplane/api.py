"""The control-plane API (port `meshcore.ports.CONTROL_PLANE`): mutual TLS, one JSON-lines request per connection.

  sign (a CSR)                  -> the chain and roots
  watch (a subscriber, since V) -> snapshot, then deltas, pings every 10 s
(messages: meshcore.wire.watch)

Callers are nodes (node credential `spiffe://<td>/trellis/node/<node>`): a node may only
watch its own view and only get certificates for workloads that run on it. In a cluster
a node, or a waypoint replica, may instead prove who it is with its ServiceAccount token,
a `"token"` field in the request (controlplane/tokenreview.py, waypointauth.py); the TLS
client certificate is then optional.
A waypoint (its replica's workload certificate `spiffe://<td>/ns/<ns>/sa/<sa>`, or in a cluster
its pod's token, which stands for that identity and its one Gateway) may watch its own
Gateway's view and have its own certificate signed, only while `<sa>` is the ServiceAccount
of a Gateway of class trellis-waypoint in `<ns>` (views.waypoint_*_refusal). Every refusal is counted by reason (`trellis_controlplane_requests_refused_total`)."""
from __future__ import annotations

import logging
import ssl
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter

from meshcore import tls
from meshcore.identity import node_from_identity
from meshcore.jsonlines import FramingError, LineReader
from meshcore.wire import WireError, watch

from .ca import CertificateAuthority, CsrRejected, NotOnNode
from .store import VersionedStore
from .tokenreview import NodeAuthRefused, TokenReviewer
from .views import (SubscriptionRefused, allowed_identities, delta, subscriber_view, waypoint_gateway,
                    waypoint_sign_refusal, waypoint_watch_refusal)

log = logging.getLogger("trellis.controlplane.api")
HANDSHAKE_TIMEOUT = 10
REQUEST_TIMEOUT = 10
PING_INTERVAL = 10.0


class ApiServer:
    def __init__(self, ca: CertificateAuthority, store: VersionedStore, tokens: TokenReviewer | None = None):
        self.ca, self.store, self.tokens = ca, store, tokens
        self.ssl_context = tls.server_context(ca.issue_server_credential(), alpn=["trellis-cp"])
        if tokens is not None:  # a node without a certificate authenticates with its token
            self.ssl_context.verify_mode = ssl.CERT_OPTIONAL
        self.stats = {"connections": 0, "tls_failures": 0, "bad_requests": 0, "signed": 0, "refused": 0, "watches": 0,
                      "waypoint_refused": 0}
        self.registry = CollectorRegistry()
        self.refusals = Counter("trellis_controlplane_requests_refused", "Requests refused, by operation and reason",
                                ["op", "reason"], registry=self.registry)

    def _refused(self, op: Any, reason: str) -> None:
        # the op comes from the caller: only known values become labels (bounded series)
        self.refusals.labels(op=op if op in ("sign", "watch") else "other", reason=reason).inc()

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, tcp: trio.SocketStream) -> None:
        peer = _peer(tcp)
        self.stats["connections"] += 1
        stream = trio.SSLStream(tcp, self.ssl_context, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
            # read the request before any refusal: closing with unread bytes makes the
            # kernel send RST, which can destroy our error reply before the peer reads it
            reader = LineReader(stream)
            with trio.fail_after(REQUEST_TIMEOUT):
                req = await reader.read()
            if req is None:
                return
            auth = await self._caller(stream, req, peer)
            if auth is None:
                return
            caller, bound_gateway = auth
            node = node_from_identity(caller, self.ca.trust_domain)
            try:
                request = watch.parse_request(req)
            except WireError as exc:
                self.stats["bad_requests"] += 1
                await self._error(stream, str(exc))
                return
            if isinstance(request, watch.SignRequest):
                if node is not None:
                    await self._sign(stream, node, request)
                else:
                    await self._sign_waypoint(stream, caller, request)
            else:
                await self._watch(stream, caller, request, peer, bound_gateway)
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            self.stats["tls_failures"] += 1
            cause = exc.__cause__ or exc  # trio wraps the SSL error
            log.warning("event=tls_failed peer=%s error=%r hint=%s", peer, str(cause) or type(cause).__name__,
                        "is the caller using a node credential from this mesh's CA?")
        except FramingError as exc:
            self.stats["bad_requests"] += 1
            log.warning("event=bad_request peer=%s error=%r", peer, str(exc))
            await self._error(stream, f"bad request: {exc}")
        except trio.TooSlowError:
            log.warning("event=timeout peer=%s hint=the caller sent no complete request in %ss", peer, REQUEST_TIMEOUT)
        except Exception:
            log.exception("event=handler_failed peer=%s", peer)
        finally:
            await trio.aclose_forcefully(stream)

    async def _caller(self, stream: trio.SSLStream, req: dict[str, Any], peer: str
                      ) -> tuple[str, tuple[str, str] | None] | None:
        """(the caller's identity, the Gateway a waypoint's token is bound to): its certificate's,
        or in a cluster the node or waypoint replica its ServiceAccount token speaks for.
        None: refused (and answered)."""
        has_cert = bool(stream.getpeercert(binary_form=True))
        if self.tokens is None or (has_cert and "token" not in req):
            return tls.verify_peer_identity(stream, None, peer), None
        try:
            who = await self.tokens.authenticate(req.get("token"), self.ca.trust_domain)
        except NodeAuthRefused as exc:
            self._refused(req.get("op"), exc.reason)
            log.warning("event=token_refused peer=%s op=%s reason=%s error=%r", peer, req.get("op"), exc.reason,
                        str(exc))
            await self._error(stream, str(exc))
            return None
        return who.identity, who.gateway

    async def _error(self, stream: trio.SSLStream, message: str) -> None:
        try:
            await stream.send_all(watch.encode(watch.ErrorReply(message)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass

    async def _sign(self, stream: trio.SSLStream, node: str, req: watch.SignRequest) -> None:
        csr = req.csr
        try:
            allowed = allowed_identities(self.store.current().resources, node, self.ca.trust_domain)
            try:
                chain = self.ca.sign_workload_csr(csr, allowed)
            except CsrRejected as exc:
                raise type(exc)(f"node {node}: {exc}") from None
        except CsrRejected as exc:
            self.stats["refused"] += 1
            self._refused("sign", "not_on_node" if isinstance(exc, NotOnNode) else "bad_csr")
            log.warning("event=csr_refused node=%s reason=%r", node, str(exc))
            await self._error(stream, str(exc))
            return
        self.stats["signed"] += 1
        log.info("event=csr_signed node=%s", node)
        await self._send_chain(stream, chain)

    async def _send_chain(self, stream: trio.SSLStream, chain: list[bytes]) -> None:
        await stream.send_all(watch.encode(watch.SignReply(tuple(c.decode() for c in chain),
                                                           tuple(r.decode() for r in self.ca.roots_pem))))

    async def _refuse_waypoint(self, stream: trio.SSLStream, caller: str, op: str, reason: str,
                               label: str = "waypoint") -> None:
        self.stats["waypoint_refused"] += 1
        self._refused(op, label)
        log.warning("event=waypoint_refused caller=%s op=%s reason=%r", caller, op, reason)
        await self._error(stream, reason)

    async def _sign_waypoint(self, stream: trio.SSLStream, caller: str, req: watch.SignRequest) -> None:
        """A caller that is not a node: only a waypoint renewing its own certificate."""
        refusal = waypoint_sign_refusal(self.store.current().resources, caller, self.ca.trust_domain)
        label = "waypoint"
        if refusal is None:
            try:
                _, uri = self.ca.check_csr(req.csr)
                if uri != caller:
                    label, refusal = "other_identity", f"the CSR asks for {uri}"
                else:
                    chain = self.ca.sign_workload_csr(req.csr, {caller})
            except CsrRejected as exc:
                label, refusal = "bad_csr", str(exc)
            if refusal is not None:
                refusal = f"waypoint {caller} may only have its own certificate signed: {refusal}"
        if refusal is not None:
            self.stats["refused"] += 1
            await self._refuse_waypoint(stream, caller, "sign", refusal, label)
            return
        self.stats["signed"] += 1
        log.info("event=csr_signed waypoint=%s", caller)
        await self._send_chain(stream, chain)

    async def _watch(self, stream: trio.SSLStream, caller: str, req: watch.WatchRequest, peer: str,
                     bound_gateway: tuple[str, str] | None = None) -> None:
        try:
            view = subscriber_view(caller, self.ca.trust_domain, req.kind, req.name)
        except SubscriptionRefused as exc:
            if req.kind == watch.WAYPOINT:
                await self._refuse_waypoint(stream, caller, "watch", str(exc))
            else:
                self._refused("watch", "other_view")
                await self._error(stream, str(exc))
            return
        if req.kind == watch.WAYPOINT:
            ns, gateway = waypoint_gateway(req.name)
            if bound_gateway is not None and ((ns or bound_gateway[0]), gateway) != bound_gateway:
                # a waypoint's token names its pod, and so its one Gateway
                await self._refuse_waypoint(stream, caller, "watch", f"{caller}: the token's pod serves waypoint "
                                            f"{'/'.join(bound_gateway)}, it may not watch {ns or bound_gateway[0]}/{gateway}",
                                            "other_view")
                return
            refusal = waypoint_watch_refusal(self.store.current().resources, caller, ns, gateway)
            if refusal is not None:
                await self._refuse_waypoint(stream, caller, "watch", refusal)
                return
        self.stats["watches"] += 1
        await self._serve_view(stream, view, req.since, f"subscriber={caller}", peer)

    async def _serve_view(self, stream: trio.SSLStream, view, since: int | None, who: str, peer: str) -> None:
        """Stream one subscriber's view: a delta from `since` when the store still has it,
        else a snapshot; then a delta on each change and a ping when nothing changed."""
        resumed = self.store.changes_since(since, view) if isinstance(since, int) else None
        if resumed is not None:
            snap, upserts, deletes = resumed
            version, sent = snap.version, view(snap.resources)
            await stream.send_all(watch.encode(watch.Delta(version, tuple(upserts), tuple(tuple(k) for k in deletes))))
            log.info("event=watch_resumed %s peer=%s since=%s version=%s", who, peer, since, version)
        else:
            snap = self.store.current()
            version, sent = snap.version, view(snap.resources)
            await stream.send_all(watch.encode(watch.Snapshot(version, tuple(sent.values()))))
            log.info("event=watch_snapshot %s peer=%s version=%s resources=%d", who, peer, version, len(sent))
        while True:
            snap = None
            with trio.move_on_after(PING_INTERVAL):
                snap = await self.store.wait_for_change(version)
            if snap is None:
                await stream.send_all(watch.encode(watch.Ping(version)))
                continue
            version, current = snap.version, view(snap.resources)
            upserts, deletes = delta(sent, current)
            sent = current
            await stream.send_all(watch.encode(watch.Delta(version, tuple(upserts), tuple(tuple(k) for k in deletes))))


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "unknown peer"
