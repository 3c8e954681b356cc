"""SPIFFE identities and the X.509 material that carries them (sans-IO, no network)."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

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


def node_from_identity(uri: str, trust_domain: str) -> str | None:
    prefix = f"spiffe://{trust_domain}/trellis/node/"
    return uri[len(prefix):] if uri.startswith(prefix) and "/" not in uri[len(prefix):] else None


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def build_csr(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def peer_uri_san(der_cert: bytes) -> str | None:
    """The single URI SAN of a DER certificate (None if absent or ambiguous)."""
    sans = uri_sans(x509.load_der_x509_certificate(der_cert))
    return sans[0] if len(sans) == 1 else None


def split_pem_chain(pem: bytes) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(pem)]


@dataclass(frozen=True)
class CertBundle:
    """A workload's (or node's) key, its chain (leaf first) and the trust roots."""
    key_pem: bytes
    chain_pem: tuple[bytes, ...]
    roots_pem: tuple[bytes, ...]
    _leaf: x509.Certificate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chain_pem:
            raise ValueError("certificate chain is empty")
        object.__setattr__(self, "_leaf", x509.load_pem_x509_certificate(self.chain_pem[0]))

    @property
    def leaf(self) -> x509.Certificate:
        return self._leaf

    @property
    def identity(self) -> str:
        sans = uri_sans(self._leaf)
        return sans[0] if sans else ""

    @property
    def not_before(self) -> dt.datetime:
        return self._leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self._leaf.not_valid_after_utc

    def refresh_at(self) -> dt.datetime:
        """Half-life: when to ask for a new certificate."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.timezone.utc)) >= self.not_after

    def chain_bytes(self) -> bytes:
        return b"".join(self.chain_pem)

    def roots_bytes(self) -> bytes:
        return b"".join(self.roots_pem)
