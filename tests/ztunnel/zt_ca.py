"""A real test CA that signs CSRs behind the same `sign(csr_pem)` interface as the control plane."""
from __future__ import annotations

import datetime as dt

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import build_csr, generate_key, key_pem
from meshcore import identity as ident


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def inprocess_keygen(uri: str) -> tuple[bytes, bytes]:
    """CertificateManager's keygen without a subprocess: tests on trio's autojump clock
    would let virtual hours pass while a real `openssl` runs."""
    key = generate_key()
    return key_pem(key), build_csr(key, uri)


class TestCA:
    __test__ = False

    def __init__(self, ttl: dt.timedelta = dt.timedelta(hours=24), now=None) -> None:
        self.ttl = ttl
        self.now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self.key = generate_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tt-zt test CA")])
        start = self.now() - dt.timedelta(days=1)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.roots = [_pem(self.cert)]
        self.signed: list[str] = []
        self.fail_with: Exception | None = None

    def issue(self, csr_pem: bytes) -> tuple[list[bytes], list[bytes]]:
        csr = x509.load_pem_x509_csr(csr_pem)
        uri = (
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)[0])
        now = self.now()
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + self.ttl)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.signed.append(uri)
        return [_pem(cert)], list(self.roots)

    async def sign(self, csr_pem: bytes):
        await trio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        return self.issue(csr_pem)

    def bundle(self, uri: str) -> ident.CertBundle:
        key = generate_key()
        chain, roots = self.issue(build_csr(key, uri))
        return ident.CertBundle(key_pem(key), tuple(chain), tuple(roots))
