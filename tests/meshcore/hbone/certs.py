"""A throwaway mesh CA for HBONE tests: real P-256 keys, real X.509, SPIFFE URI SANs."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import build_csr, generate_key, key_pem
from meshcore.identity import CertBundle
from meshcore.tls import client_context, server_context

PEM = serialization.Encoding.PEM


class TestCA:
    __test__ = False   # not a pytest class

    def __init__(self, name: str = "tt-hbone-ca") -> None:
        self.key = generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.root_pem = self.cert.public_bytes(PEM)

    def issue(self, uri: str) -> CertBundle:
        """Sign a CSR the way the control plane does: the key stays with the workload."""
        key = generate_key()
        csr = x509.load_pem_x509_csr(build_csr(key, uri))
        now = dt.datetime.now(dt.timezone.utc)
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        return CertBundle(key_pem(key), (leaf.public_bytes(PEM),), (self.root_pem,))


def client_ctx(bundle: CertBundle):
    return client_context(bundle, alpn=["h2"])


def server_ctx(bundle: CertBundle):
    return server_context(bundle, alpn=["h2"])
