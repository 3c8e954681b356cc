"""Workload certificates for the identities a data-plane process serves (ztunnel: its
node's pods; a waypoint: its own).

Keys are generated here and never leave; the control plane signs CSRs. Each identity
gets a worker that renews at half-life, counted from when the certificate arrived
(`identity.renewal_time`), and, when signing fails or the CA hands out a certificate that
is already due, retries with backoff for as long as the current certificate is still valid. Open connections keep the
SSLContext they were made with, so renewal never touches them.
"""
from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import trio

from . import identity as ident
from . import tls
from .keygen import new_key_and_csr

log = logging.getLogger("trellis.certs")


class Signer(Protocol):
    async def sign(self, csr_pem: bytes) -> tuple[list, list]: ...


KeyGen = Callable[[str], Awaitable[tuple[bytes, bytes]]]   # identity -> (key PEM, CSR PEM)


class CertificateUnavailable(RuntimeError):
    pass


class CertificateDue(CertificateUnavailable):
    """The CA returned a certificate that is already (or nearly) expired when it arrived:
    renewing at once would loop, so this counts as a failed renewal and backs off."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem(x: Any) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


@dataclass
class _Entry:
    identity: str
    refs: int = 0
    bundle: ident.CertBundle | None = None
    received: dt.datetime | None = None   # when `bundle` arrived: renewal counts from there
    state: str = "pending"
    last_error: str | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


class CertificateManager:
    def __init__(self, signer: Signer, trust_domain: str, *, now: Callable[[], dt.datetime] = _utcnow,
                 min_backoff: float = 0.5, max_backoff: float = 30.0, alpn: list[str] | None = None,
                 keygen: KeyGen = new_key_and_csr) -> None:
        self.signer, self.trust_domain, self.now, self.keygen = signer, trust_domain, now, keygen
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.alpn = alpn if alpn is not None else ["h2"]
        self._entries: dict[str, _Entry] = {}
        self._contexts: dict[tuple[str, int, bool], ssl.SSLContext] = {}
        self._nursery: trio.Nursery | None = None
        # Called with (identity, bundle, received) whenever a certificate is taken: ztunnel's
        # owner process hands each one to its workers (ztunnel/fleet.py).
        self.on_issued: Callable[[str, ident.CertBundle, dt.datetime], None] | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for e in self._entries.values():
                nursery.start_soon(self._worker, e)
            task_status.started()
            await trio.sleep_forever()

    # ---- which identities we need ----------------------------------------------
    def want(self, identity: str) -> None:
        """A local pod needs `identity`; the first caller starts its worker."""
        e = self._entries.get(identity)
        if e is None:
            ident.SpiffeId.parse(identity)  # a clear error before anything is signed
            e = self._entries[identity] = _Entry(identity)
            if self._nursery is not None:
                self._nursery.start_soon(self._worker, e)
        e.refs += 1

    def release(self, identity: str) -> None:
        e = self._entries.get(identity)
        if e is None:
            return
        e.refs -= 1
        if e.refs <= 0:
            e.cancel.cancel()
            del self._entries[identity]
            for k in [k for k in self._contexts if k[0] == identity]:
                del self._contexts[k]

    async def wait_ready(self, identity: str) -> ident.CertBundle:
        e = self._entries.get(identity)
        if e is None:
            raise CertificateUnavailable(f"nothing here uses {identity}; a data-plane process holds certificates "
                                         f"only for the identities it serves (ztunnel: its node's pods)")
        await e.ready.wait()
        return e.bundle

    # ---- renewal -------------------------------------------------------------------
    async def _sign(self, identity: str) -> ident.CertBundle:
        key_pem, csr = await self.keygen(identity)
        chain, roots = await self.signer.sign(csr)
        bundle = ident.CertBundle(key_pem, tuple(_pem(c) for c in chain), tuple(_pem(r) for r in roots))
        if bundle.identity != identity:
            raise CertificateUnavailable(f"control plane signed {bundle.identity!r} when {identity} was asked")
        return bundle

    def _accept(self, e: _Entry, bundle: ident.CertBundle, received: dt.datetime) -> None:
        """Take a new certificate, unless it is already due (then raise CertificateDue, after
        keeping it if it is still better than nothing)."""
        if bundle.not_after - received < ident.MIN_USEFUL_LIFETIME:
            if not bundle.expired(received) and (e.bundle is None or bundle.not_after > e.bundle.not_after):
                e.bundle, e.received = bundle, received
                e.ready.set()
                self._issued(e)
            raise CertificateDue(
                f"the control plane issued a certificate for {e.identity} that is already due: received at "
                f"{received.isoformat()}, valid {bundle.not_before.isoformat()} to {bundle.not_after.isoformat()} "
                f"(less than {ident.MIN_USEFUL_LIFETIME.total_seconds():g}s left)")
        e.bundle, e.received = bundle, received
        self._issued(e)

    def _issued(self, e: _Entry) -> None:
        if self.on_issued is not None:
            self.on_issued(e.identity, e.bundle, e.received)

    def put(self, identity: str, bundle: ident.CertBundle, received: dt.datetime) -> None:
        """A certificate issued elsewhere and used as is, never renewed here: a ztunnel
        worker gets each one from its owner process, which renews for the whole node."""
        e = self._entries.get(identity)
        if e is None:
            e = self._entries[identity] = _Entry(identity)
        e.bundle, e.received, e.state, e.last_error = bundle, received, "valid", None
        e.ready.set()

    @staticmethod
    def _refresh_at(e: _Entry) -> dt.datetime:
        return e.bundle.refresh_at(e.received)

    def _seconds_until(self, when: dt.datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds())

    async def _worker(self, e: _Entry) -> None:
        backoff = self.min_backoff
        with e.cancel:
            while True:
                try:
                    if e.bundle is not None:
                        e.state = "renewing"
                    bundle = await self._sign(e.identity)
                    self._accept(e, bundle, self.now())
                    e.state, e.last_error, backoff = "valid", None, self.min_backoff
                    e.ready.set()
                    log.info("certificate for %s issued, serial %x, valid until %s, renewal at %s", e.identity,
                             e.bundle.serial, e.bundle.not_after.isoformat(), self._refresh_at(e).isoformat())
                    await trio.sleep(self._seconds_until(self._refresh_at(e)))
                except (Exception, trio.TooSlowError) as exc:  # keep serving the current cert
                    e.last_error = f"{type(exc).__name__}: {exc}"
                    valid = e.bundle is not None and not e.bundle.expired(self.now())
                    e.state = "renewal failing, current still valid" if valid else "unavailable"
                    advice = ("check the control plane's clock and --cert-ttl" if isinstance(exc, CertificateDue) else
                              "is the control plane reachable and does it know a workload with this identity "
                              "on this node?")
                    log.warning("signing a certificate for %s failed (%s); retrying in %.1fs; %s",
                                e.identity, e.last_error, backoff, advice)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)

    # ---- use ------------------------------------------------------------------------
    def bundle(self, identity: str) -> ident.CertBundle:
        e = self._entries.get(identity)
        if e is None or e.bundle is None:
            why = e.last_error if e and e.last_error else "not issued yet"
            raise CertificateUnavailable(f"no certificate for {identity} ({why}); is the control plane "
                                         f"reachable from this node?")
        if e.bundle.expired(self.now()):
            raise CertificateUnavailable(f"certificate for {identity} expired at {e.bundle.not_after.isoformat()} "
                                         f"and could not be renewed: {e.last_error}")
        return e.bundle

    def ssl_context_for(self, identity: str, server: bool = False) -> ssl.SSLContext:
        bundle = self.bundle(identity)
        key = (identity, bundle.serial, server)
        ctx = self._contexts.get(key)
        if ctx is None:
            for old in [k for k in self._contexts if k[0] == identity and k[2] == server]:
                del self._contexts[old]
            make = tls.server_context if server else tls.client_context
            ctx = self._contexts[key] = make(bundle, self.alpn)
        return ctx

    def dump(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self._entries.values(), key=lambda e: e.identity):
            b = e.bundle
            out.append({"identity": e.identity, "state": e.state, "pods": e.refs, "lastError": e.last_error,
                        "serial": f"{b.serial:x}" if b else None,
                        "notBefore": b.not_before.isoformat() if b else None,
                        "notAfter": b.not_after.isoformat() if b else None,
                        "refreshAt": self._refresh_at(e).isoformat() if b else None})
        return out
