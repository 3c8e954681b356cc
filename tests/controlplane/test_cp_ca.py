"""The CA: persistence, intermediates, and a precise refusal for every bogus CSR."""
import datetime as dt
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.ca import CertificateAuthority, CsrRejected, parse_duration, write_credential
from controlplane.ca import build_csr, generate_key, key_pem

WEB = "spiffe://cluster.local/ns/default/sa/web"


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", dt.timedelta(minutes=10))


def test_root_is_generated_once_persisted_and_private(tmp_path, ca):
    again = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    assert again.cert == ca.cert
    assert oct((tmp_path / "ca" / "root-key.pem").stat().st_mode & 0o777) == "0o600"


def test_issued_leaf_is_a_spiffe_svid(ca):
    chain = ca.sign_workload_csr(build_csr(generate_key(), WEB))
    leaf = x509.load_pem_x509_certificate(chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(minutes=10) < life <= dt.timedelta(minutes=11)  # TTL + 1 minute of backdating
    leaf.verify_directly_issued_by(ca.cert)


def _csr(key, sans, sign_key=None):
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    return b.sign(sign_key or key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _bad_signature():
    good = _csr(generate_key(), [x509.UniformResourceIdentifier(WEB)])
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # flip a byte of the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize("make,message", [
    (lambda: b"garbage", "not a PEM certificate signing request"),
    (_bad_signature, "signature does not verify"),
    (lambda: _csr(generate_key(), []), "no subjectAltName"),
    (lambda: _csr(generate_key(), [URI(WEB), URI(WEB.replace("web", "db"))]), "exactly one URI SAN"),
    (lambda: _csr(generate_key(), [URI(WEB), x509.DNSName("web.default")]), "exactly one URI SAN"),
    (lambda: _csr(generate_key(), [URI("spiffe://evil.org/ns/default/sa/web")]), "not in this mesh's trust domain"),
    (lambda: _csr(generate_key(), [URI("spiffe://cluster.local/trellis/node/node1")]), "not a workload SPIFFE ID"),
    (lambda: _csr(rsa.generate_private_key(65537, 2048), [URI(WEB)]), "ECDSA P-256"),
    (lambda: _csr(ec.generate_private_key(ec.SECP384R1()), [URI(WEB)]), "ECDSA P-256"),
])
def test_bogus_csrs_are_refused_precisely(ca, make, message):
    with pytest.raises(CsrRejected, match=message):
        ca.sign_workload_csr(make())


def test_identity_outside_the_allowed_set_is_refused(ca):
    with pytest.raises(CsrRejected, match="does not belong to any workload on the asking node"):
        ca.sign_workload_csr(build_csr(generate_key(), WEB), allowed={"spiffe://cluster.local/ns/default/sa/sleep"})


def _make_ca(name, issuer_key=None, issuer_cert=None):
    key = generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer_cert.subject if issuer_cert else subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer_key or key, hashes.SHA256()))
    return key, cert


def test_user_supplied_intermediate_signs_and_chains_to_its_root(tmp_path):
    root_key, root = _make_ca("corp root")
    inter_key, inter = _make_ca("mesh intermediate", root_key, root)
    d = tmp_path / "cacerts"
    d.mkdir()
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    (d / "ca-cert.pem").write_bytes(pem(inter))
    (d / "ca-key.pem").write_bytes(key_pem(inter_key))
    (d / "cert-chain.pem").write_bytes(pem(inter) + pem(root))
    (d / "root-cert.pem").write_bytes(pem(root))
    ca = CertificateAuthority.load_or_create(d, "cluster.local")
    chain = ca.sign_workload_csr(build_csr(generate_key(), WEB))
    assert len(chain) == 2 and chain[1] == pem(inter) and ca.roots_pem == (pem(root),)
    (tmp_path / "leaf.pem").write_bytes(chain[0])
    (tmp_path / "untrusted.pem").write_bytes(chain[1])
    out = subprocess.run(["openssl", "verify", "-CAfile", str(d / "root-cert.pem"), "-untrusted",
                          str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (d / "root-key.pem").exists(), "an intermediate setup must not grow a self-signed root"


def test_intermediate_without_its_key_is_a_clear_error(tmp_path):
    d = tmp_path / "cacerts"
    d.mkdir()
    (d / "ca-cert.pem").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="ca-key.pem, root-cert.pem is missing"):
        CertificateAuthority.load_or_create(d, "cluster.local")


def test_node_credential_files(tmp_path, ca):
    write_credential(ca.issue_node_credential("node1"), tmp_path / "n1")
    assert oct(os.stat(tmp_path / "n1" / "bootstrap.key").st_mode & 0o777) == "0o600"
    leaf = x509.load_pem_x509_certificate((tmp_path / "n1" / "bootstrap.crt").read_bytes())
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://cluster.local/trellis/node/node1"]


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("24h", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "-5s", "0s", "ten minutes"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
