"""meshcore.der against `cryptography`'s own parse, on certificates real CAs issue, and on garbage."""
import datetime as dt
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from meshcore import der
from meshcore.identity import CertBundle, peer_uri_san, split_pem_chain, uri_sans

WEB = "spiffe://cluster.local/ns/default/sa/web"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
UTC = dt.timezone.utc


def _agrees(cert: x509.Certificate) -> der.CertInfo:
    info = der.parse_certificate(cert.public_bytes(DER))
    try:
        want_uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        want_uris = []
    assert info == der.CertInfo(cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc,
                                tuple(want_uris))
    return info


def _cert(sans=None, not_before=None, not_after=None, serial=None, critical=True) -> x509.Certificate:
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tt-der")])
    now = dt.datetime.now(UTC).replace(microsecond=0)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(serial or x509.random_serial_number())
         .not_valid_before(not_before or now).not_valid_after(not_after or now + dt.timedelta(hours=1)))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=critical)
    return b.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"), "cluster.local")


@pytest.fixture(scope="module")
def leaf_der(ca):
    return x509.load_pem_x509_certificate(ca.sign_workload_csr(build_csr(generate_key(), WEB))[0]).public_bytes(DER)


def test_agrees_with_cryptography_on_control_plane_certificates(ca):
    for pem in [*ca.sign_workload_csr(build_csr(generate_key(), WEB)), *ca.roots_pem,
                *ca.issue_node_credential("node1").chain_pem, *ca.issue_server_credential().chain_pem]:
        _agrees(x509.load_pem_x509_certificate(pem))
    assert _agrees(x509.load_pem_x509_certificate(ca.sign_workload_csr(build_csr(generate_key(), WEB))[0])).uri_sans == (WEB,)
    assert _agrees(ca.cert).uri_sans == ()   # the root: no SAN at all


def test_generalized_time_and_utctime_centuries():
    # RFC 5280: UTCTime for 1950..2049, GeneralizedTime from 2050 (before 1950: see the hand-made one below)
    c = _cert(not_before=dt.datetime(2050, 1, 1, tzinfo=UTC), not_after=dt.datetime(2061, 2, 28, 1, 2, 3, tzinfo=UTC))
    assert b"\x18\x0f20500101000000Z" in c.public_bytes(DER)
    info = _agrees(c)
    assert info.not_before == dt.datetime(2050, 1, 1, tzinfo=UTC)
    assert info.not_after == dt.datetime(2061, 2, 28, 1, 2, 3, tzinfo=UTC)
    c = _cert(not_before=dt.datetime(1950, 1, 1, tzinfo=UTC), not_after=dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert b"\x17\x0d500101000000Z" in c.public_bytes(DER)
    info = _agrees(c)
    assert (info.not_before.year, info.not_after.year) == (1950, 2049)
    assert info.not_before.tzinfo is UTC and info.not_after.utcoffset() == dt.timedelta(0)


def test_several_uri_sans_in_order_among_other_names():
    uris = [WEB, "spiffe://cluster.local/ns/default/sa/db", "https://example.test/x?y=1"]
    sans = [x509.DNSName("web.default"), x509.UniformResourceIdentifier(uris[0]), x509.RFC822Name("a@b.test"),
            x509.UniformResourceIdentifier(uris[1]), x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1")),
            x509.UniformResourceIdentifier(uris[2])]
    c = _cert(sans, critical=False)
    assert _agrees(c).uri_sans == tuple(uris)
    assert uri_sans(c.public_bytes(DER)) == uris
    assert peer_uri_san(c.public_bytes(DER)) is None   # an identity must be unambiguous


def test_san_without_uri_and_no_san():
    assert _agrees(_cert([x509.DNSName("web.default")])).uri_sans == ()
    assert _agrees(_cert()).uri_sans == ()
    assert peer_uri_san(_cert().public_bytes(DER)) is None


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, (1 << 159) - 1, 1 << 158])
def test_serials_with_and_without_a_leading_zero_byte(serial):
    assert _agrees(_cert(serial=serial)).serial == serial


def test_every_truncation_is_a_value_error(leaf_der):
    for n in range(len(leaf_der)):
        with pytest.raises(der.DerError):
            der.parse_certificate(leaf_der[:n])
    with pytest.raises(der.DerError, match="truncated DER: Certificate at offset 0 claims"):
        der.parse_certificate(leaf_der[:100])


def test_garbage_only_ever_raises_value_error(leaf_der):
    rng = random.Random(1234)
    for _ in range(300):
        with pytest.raises(ValueError):
            der.parse_certificate(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    for _ in range(3000):   # single-byte corruption anywhere: either still readable, or ValueError
        b = bytearray(leaf_der)
        b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            der.parse_certificate(bytes(b))
        except ValueError:
            pass
        assert peer_uri_san(bytes(b)) is None or isinstance(peer_uri_san(bytes(b)), str)


@pytest.mark.parametrize("data, message", [
    (b"", "truncated DER: Certificate expected at offset 0"),
    (b"\x31\x00", r"wrong tag where Certificate \(SEQUENCE\) was expected at offset 0: got tag 0x31"),
    (b"\x30\x80\x00\x00", "indefinite length"),
    (b"\x30\x81\x05" + bytes(5), "not in its shortest form"),
    (b"\x30\x85\x01\x00\x00\x00\x00", "5-byte length"),
    (b"\x1f\x01\x00", "high-tag-number form"),
    (b"\x30", "has a tag but no length"),
    (b"\x30\x00\x00", "1 bytes of trailing data"),
    (b"\x30\x02\x02\x00", r"wrong tag where tbsCertificate \(SEQUENCE\) was expected at offset 2: got INTEGER"),
    (b"\x30\x04\x30\x02\x02\x00", "serialNumber is an empty INTEGER"),
])
def test_malformed_says_what_is_wrong(data, message):
    with pytest.raises(der.DerError, match=message):
        der.parse_certificate(data)


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _with_times(*times: tuple[int, bytes]) -> bytes:
    """A minimal (unsigned, but well-formed) certificate around a hand-made validity."""
    tbs = _seq(_tlv(0x02, b"\x01"), _seq(), _seq(), _seq(*(_tlv(t, v) for t, v in times)), _seq(), _seq())
    return _seq(tbs, _seq(), _tlv(0x03, b"\x00"))


UT, GT = 0x17, 0x18


@pytest.mark.parametrize("times, message", [
    ([(UT, b"991231235959Z"), (GT, b"20501301000000Z")], "notAfter '20501301000000Z' is not a real date: month"),
    ([(UT, b"9912312359Z"), (GT, b"20500101000000Z")], "notBefore b'9912312359Z' is not a DER UTCTime"),
    ([(UT, b"991231235959Z"), (GT, b"2050010100000+0")], "is not a DER GeneralizedTime"),
    ([(UT, b"991231235959Z"), (GT, b"20500101000000.5Z")], "is not a DER GeneralizedTime"),
    ([(UT, b"991231235959Z"), (0x04, b"20500101000000Z")], r"notAfter \(UTCTime or GeneralizedTime\) was expected"),
    ([(UT, b"991231235959Z"), (GT, b"20500101000000Z"), (0x05, b"")], "more than notBefore"),
    ([(UT, b"991231235959Z")], "truncated DER: notAfter expected"),
])
def test_bad_times(times, message):
    with pytest.raises(der.DerError, match=message):
        der.parse_certificate(_with_times(*times))


def test_a_hand_made_certificate_with_both_time_forms():
    info = der.parse_certificate(_with_times((UT, b"500101000000Z"), (GT, b"20991231235959Z")))
    assert info == der.CertInfo(1, dt.datetime(1950, 1, 1, tzinfo=UTC), dt.datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), ())
    info = der.parse_certificate(_with_times((UT, b"491231235959Z"), (GT, b"19491231235959Z")))
    assert (info.not_before.year, info.not_after.year) == (2049, 1949)


def test_pem_split_normalises_like_cryptography(ca):
    a, b = _cert([x509.UniformResourceIdentifier(WEB)]), _cert()
    messy = (b"subject=whatever\r\n" + a.public_bytes(PEM).replace(b"\n", b"\r\n") + b"\n\n" +
             b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" + b.public_bytes(PEM))
    assert split_pem_chain(messy) == [a.public_bytes(PEM), b.public_bytes(PEM)]
    assert der.pem_blocks(messy) == [a.public_bytes(DER), b.public_bytes(DER)]
    assert der.to_pem(a.public_bytes(DER)) == a.public_bytes(PEM)


@pytest.mark.parametrize("pem, message", [
    (b"", "no PEM CERTIFICATE block found"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no PEM CERTIFICATE block"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "block 1 is not valid base64"),
    (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "certificate 1 of the PEM bundle: .*tbsCertificate"),
])
def test_bad_pem(pem, message):
    with pytest.raises(ValueError, match=message):
        split_pem_chain(pem)


def test_cert_bundle_reads_the_leaf(ca):
    key = generate_key()
    chain = ca.sign_workload_csr(build_csr(key, WEB))
    b = CertBundle(key_pem(key), tuple(chain), ca.roots_pem)
    leaf = x509.load_pem_x509_certificate(chain[0])
    assert (b.identity, b.serial, b.not_before, b.not_after) == (
        WEB, leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    with pytest.raises(ValueError, match="leaf certificate: no PEM CERTIFICATE block"):
        CertBundle(key_pem(key), (b"junk",), ca.roots_pem)
    with pytest.raises(ValueError, match="chain is empty"):
        CertBundle(key_pem(key), (), ca.roots_pem)
