"""The mesh CA: signs CSRs for SPIFFE identities. Keys are generated where they are used;
only CSRs and certificates travel.

A self-signed root is generated on first start and persisted in the CA directory
(`root-cert.pem`, `root-key.pem`). If the directory holds a user-supplied intermediate the
way Istio's `cacerts` secret does (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
`root-cert.pem`), that signs instead and issued chains carry it.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.identity import CertBundle, SpiffeId, controlplane_identity, node_identity, split_pem_chain

DEFAULT_TTL = dt.timedelta(hours=24)
# not-before is backdated by this, for clocks a little behind the CA's; renewal counts from
# when a certificate arrives, not from not-before (meshcore.identity.renewal_time).
SKEW = dt.timedelta(minutes=1)


class CsrRejected(ValueError):
    """The CSR is malformed or asks for something this caller may not have."""


class NotOnNode(CsrRejected):
    """The identity asked for has no workload on the asking node."""


# Keys and CSRs with `cryptography`, for what the control plane issues itself (its root,
# its server and node credentials) and for tests. Workloads make theirs with
# meshcore.keygen (openssl) so that ztunnel never imports `cryptography`.
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


def parse_duration(text: str) -> dt.timedelta:
    m = re.fullmatch(r"([1-9][0-9]*)(s|m|h)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 24h")
    return dt.timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours"}[m[2]]: int(m[1])})


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass
class CertificateAuthority:
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain_pem: tuple[bytes, ...]   # the signing cert and any intermediates above it
    roots_pem: tuple[bytes, ...]
    ttl: dt.timedelta = DEFAULT_TTL
    # The clock leaves are dated by (tests run it on trio's virtual clock).
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.timezone.utc), repr=False)

    @classmethod
    def load_or_create(cls, ca_dir: str | Path, trust_domain: str, ttl: dt.timedelta = DEFAULT_TTL) -> "CertificateAuthority":
        d = Path(ca_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (d / "ca-cert.pem").exists() and not (d / "root-cert.pem").exists():
            for name, data in new_root_files(trust_domain).items():
                _write(d / name, data, private=name.endswith("key.pem"))
        files = {f: (d / f).read_bytes() for f in CA_FILES if (d / f).exists()}
        return cls.from_pem(files, trust_domain, ttl, str(d))

    @classmethod
    def from_pem(cls, files: dict[str, bytes], trust_domain: str, ttl: dt.timedelta = DEFAULT_TTL,
                 where: str = "the CA") -> "CertificateAuthority":
        """The CA from its files, wherever they were kept (a directory, a Secret)."""
        if "ca-cert.pem" in files:  # user-supplied intermediate (Istio cacerts layout)
            missing = [f for f in ("ca-key.pem", "root-cert.pem") if f not in files]
            if missing:
                raise FileNotFoundError(f"{where}: ca-cert.pem is present but {', '.join(missing)} is missing "
                                        "(an intermediate CA needs ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)")
            cert = x509.load_pem_x509_certificate(files["ca-cert.pem"])
            key = serialization.load_pem_private_key(files["ca-key.pem"], None)
            chain = split_pem_chain(files["cert-chain.pem"]) if "cert-chain.pem" in files \
                else [cert.public_bytes(serialization.Encoding.PEM)]
            roots = split_pem_chain(files["root-cert.pem"])
            # the chain we hand out ends below the root: clients hold the root already
            chain = [c for c in chain if c not in roots]
            return cls(trust_domain, key, cert, tuple(chain), tuple(roots), ttl)
        missing = [f for f in ("root-cert.pem", "root-key.pem") if f not in files]
        if missing:
            raise FileNotFoundError(f"{where}: {', '.join(missing)} missing (a self-signed root CA needs "
                                    "root-cert.pem and root-key.pem)")
        cert = x509.load_pem_x509_certificate(files["root-cert.pem"])
        key = serialization.load_pem_private_key(files["root-key.pem"], None)
        return cls(trust_domain, key, cert, (), (cert.public_bytes(serialization.Encoding.PEM),), ttl)

    # -- signing -------------------------------------------------------------------------
    def check_csr(self, csr_pem: bytes | str) -> tuple[x509.CertificateSigningRequest, str]:
        """Parse and check a CSR; return it and the single URI SAN it asks for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except (ValueError, TypeError) as exc:
            raise CsrRejected(f"not a PEM certificate signing request: {exc}") from None
        try:
            if not csr.is_signature_valid:
                raise CsrRejected("CSR signature does not verify: the CSR was not signed by its own key")
        except InvalidSignature:
            raise CsrRejected("CSR signature does not verify") from None
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise CsrRejected(f"key must be ECDSA P-256, got {type(pub).__name__.replace('_', '')}")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CsrRejected("CSR has no subjectAltName; it must carry exactly one SPIFFE URI") from None
        others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if others or len(uris) != 1:
            raise CsrRejected(f"CSR must carry exactly one URI SAN and nothing else, got {[str(n.value) for n in san]}")
        return csr, uris[0]

    def sign(self, csr: x509.CertificateSigningRequest, uri: str, ttl: dt.timedelta | None = None) -> list[bytes]:
        now = self.now()
        not_after = min(now + (ttl or self.ttl), self.cert.not_valid_after_utc)
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.cert.subject)
                .public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        return [leaf.public_bytes(serialization.Encoding.PEM), *self.chain_pem]

    def sign_workload_csr(self, csr_pem: bytes | str, allowed: set[str] | None = None) -> list[bytes]:
        """Sign a workload CSR. `allowed`: identities the caller may ask for (None: any)."""
        csr, uri = self.check_csr(csr_pem)
        try:
            sid = SpiffeId.parse(uri)
        except ValueError as exc:
            raise CsrRejected(str(exc)) from None
        if sid.trust_domain != self.trust_domain:
            raise CsrRejected(f"{uri} is not in this mesh's trust domain {self.trust_domain}")
        if allowed is not None and uri not in allowed:
            raise NotOnNode(f"{uri} does not belong to any workload on the asking node")
        return self.sign(csr, uri)

    # -- credentials issued directly (the key is made here, for bootstrap only) ------------
    def _issue(self, uri: str, ttl: dt.timedelta) -> CertBundle:
        key = generate_key()
        csr, _ = self.check_csr(build_csr(key, uri))
        return CertBundle(key_pem(key), tuple(self.sign(csr, uri, ttl)), self.roots_pem)

    def issue_node_credential(self, node: str, ttl: dt.timedelta = dt.timedelta(days=365)) -> CertBundle:
        return self._issue(node_identity(self.trust_domain, node), ttl)

    def issue_server_credential(self, ttl: dt.timedelta = dt.timedelta(days=365)) -> CertBundle:
        return self._issue(controlplane_identity(self.trust_domain), ttl)


CA_FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "root-key.pem")


def new_root_files(trust_domain: str) -> dict[str, bytes]:
    """A new self-signed root: root-cert.pem and root-key.pem."""
    key, cert = _self_signed_root(trust_domain)
    return {"root-key.pem": key_pem(key), "root-cert.pem": cert.public_bytes(serialization.Encoding.PEM)}


def _self_signed_root(trust_domain: str):
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Trellis root CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def write_credential(bundle: CertBundle, out: str | Path) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "bootstrap.key", bundle.key_pem, private=True)
    _write(d / "bootstrap.crt", bundle.chain_bytes())
    _write(d / "roots.pem", bundle.roots_bytes())
