"""SPIFFE identities and the X.509 material that carries them (sans-IO, no network).

No `cryptography` here: ztunnel imports this module, and certificates are read with the
small DER reader in `meshcore.der` (keys and CSRs come from `meshcore.keygen`). The CA,
which does need `cryptography`, is a separate process (controlplane/ca.py)."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from . import der

_LABEL = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TD_RE = re.compile(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
_WORKLOAD_RE = re.compile(rf"^spiffe://(?P<td>[^/]+)/ns/(?P<ns>{_LABEL})/sa/(?P<sa>{_LABEL})$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TD_RE.match(self.trust_domain):
            raise ValueError(f"invalid trust domain {self.trust_domain!r}")
        for what, v in (("namespace", self.namespace), ("service account", self.service_account)):
            if not re.fullmatch(_LABEL, v):
                raise ValueError(f"invalid {what} {v!r} in SPIFFE ID")

    @classmethod
    def parse(cls, uri: str) -> "SpiffeId":
        m = _WORKLOAD_RE.match(uri)
        if not m:
            raise ValueError(f"not a workload SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>): {uri!r}")
        return cls(m["td"], m["ns"], m["sa"])

    def __str__(self) -> str:
        return workload_identity(self.trust_domain, self.namespace, self.service_account)


CONTROLPLANE_SA = ("trellis-system", "controlplane")


def workload_identity(trust_domain: str, namespace: str, service_account: str) -> str:
    """A workload's SPIFFE ID. No validation (SpiffeId does that): it is on hot paths and
    its inputs come from validated resources."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def controlplane_identity(trust_domain: str) -> str:
    """What the control plane presents; data-plane clients insist on it."""
    return workload_identity(trust_domain, *CONTROLPLANE_SA)


def node_identity(trust_domain: str, node: str) -> str:
    """The node credential's URI SAN: what ztunnel and the node agent present to the control plane."""
    return f"spiffe://{trust_domain}/trellis/node/{node}"


def trust_domain_of(uri: str) -> str:
    """The trust domain of any SPIFFE ID (a workload's or a node's)."""
    if not uri.startswith("spiffe://") or not uri[len("spiffe://"):].split("/", 1)[0]:
        raise ValueError(f"not a SPIFFE ID (spiffe://<trust domain>/...): {uri!r}")
    return uri[len("spiffe://"):].split("/", 1)[0]


def node_from_identity(uri: str, trust_domain: str) -> str | None:
    prefix = f"spiffe://{trust_domain}/trellis/node/"
    return uri[len(prefix):] if uri.startswith(prefix) and "/" not in uri[len(prefix):] else None


def uri_sans(der_cert: bytes) -> list[str]:
    """Every URI SAN of a DER certificate, in order."""
    return list(der.parse_certificate(der_cert).uri_sans)


def peer_uri_san(der_cert: bytes) -> str | None:
    """The single URI SAN of a DER certificate (None if absent, ambiguous or unreadable).

    Only called on a certificate the TLS handshake has already verified against the mesh
    roots, so an unreadable one means a CA that issues odd certificates: no identity."""
    try:
        sans = der.parse_certificate(der_cert).uri_sans
    except ValueError:
        return None
    return sans[0] if len(sans) == 1 else None


def split_pem_chain(pem: bytes) -> list[bytes]:
    """Each certificate of a PEM bundle as its own normalised PEM block; raises ValueError
    if there is none or one does not parse."""
    out = []
    for i, d in enumerate(der.pem_blocks(pem), 1):
        try:
            der.parse_certificate(d)
        except ValueError as exc:
            raise ValueError(f"certificate {i} of the PEM bundle: {exc}") from None
        out.append(der.to_pem(d))
    return out


# Renewal never comes sooner than this after a certificate arrived, unless its lifetime is
# too short for that (then at RENEWAL_FLOOR_SHARE of what is left).
RENEWAL_FLOOR = dt.timedelta(seconds=10)
RENEWAL_FLOOR_SHARE = 0.8
# A certificate with less than this left when it arrives is already due: renewing it at
# once would loop, so the certificate manager treats it as a failure and backs off.
MIN_USEFUL_LIFETIME = dt.timedelta(seconds=2)


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, received: dt.datetime) -> dt.datetime:
    """Half of the lifetime left from when the certificate was issued to us, bounded below.

    Counted from the later of not-before and the time we received it: CAs backdate
    not-before (ours by a minute, for clock skew), and a half-life counted from there lies
    before issuance when the lifetime is under twice the backdating, which made ztunnel
    re-sign in a tight loop (issue 13)."""
    issued = max(not_before, received)
    left = not_after - issued
    floor = min(RENEWAL_FLOOR, max(not_after - received, dt.timedelta(0)) * RENEWAL_FLOOR_SHARE)
    return max(issued + left / 2, received + floor)


@dataclass(frozen=True)
class CertBundle:
    """A workload's (or node's) key, its chain (leaf first) and the trust roots."""
    key_pem: bytes
    chain_pem: tuple[bytes, ...]
    roots_pem: tuple[bytes, ...]
    _leaf: der.CertInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chain_pem:
            raise ValueError("certificate chain is empty")
        try:
            leaf = der.parse_certificate(der.pem_blocks(self.chain_pem[0])[0])
        except ValueError as exc:
            raise ValueError(f"leaf certificate: {exc}") from None
        object.__setattr__(self, "_leaf", leaf)

    @property
    def identity(self) -> str:
        sans = self._leaf.uri_sans
        return sans[0] if sans else ""

    @property
    def serial(self) -> int:
        """The leaf's serial number: tells a renewed certificate from the one it replaced."""
        return self._leaf.serial

    @property
    def not_before(self) -> dt.datetime:
        return self._leaf.not_before

    @property
    def not_after(self) -> dt.datetime:
        return self._leaf.not_after

    def refresh_at(self, received: dt.datetime | None = None) -> dt.datetime:
        """When to ask for a new certificate: see `renewal_time`. Without `received`, the
        certificate counts as received at its not-before."""
        return renewal_time(self.not_before, self.not_after, received or self.not_before)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.not_after

    def chain_bytes(self) -> bytes:
        return b"".join(self.chain_pem)

    def roots_bytes(self) -> bytes:
        return b"".join(self.roots_pem)
