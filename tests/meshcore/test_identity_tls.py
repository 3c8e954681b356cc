"""SPIFFE IDs, CertBundle, and the mTLS contexts with their identity check (real handshakes)."""
import datetime as dt
import socket
import ssl
import threading

import pytest

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from meshcore import tls
from meshcore.identity import CertBundle, SpiffeId, node_from_identity, peer_uri_san


@pytest.mark.parametrize("uri", ["spiffe://cluster.local/ns/default/sa/web", "spiffe://a.b-c/ns/x-1/sa/y.z"])
def test_spiffe_round_trip(uri):
    assert str(SpiffeId.parse(uri)) == uri


@pytest.mark.parametrize("uri", ["spiffe://td/ns/default", "http://td/ns/a/sa/b", "spiffe://td/ns/A/sa/b",
                                 "spiffe://td/ns/a/sa/b/extra", "spiffe:///ns/a/sa/b"])
def test_bad_spiffe_ids(uri):
    with pytest.raises(ValueError):
        SpiffeId.parse(uri)


def test_node_identity():
    assert node_from_identity("spiffe://td/trellis/node/n1", "td") == "n1"
    assert node_from_identity("spiffe://td/trellis/node/n1/x", "td") is None
    assert node_from_identity("spiffe://other/trellis/node/n1", "td") is None


def _bundle(ca, uri, ttl=None):
    key = generate_key()
    csr, _ = ca.check_csr(build_csr(key, uri))
    return CertBundle(key_pem(key), tuple(ca.sign(csr, uri, ttl)), ca.roots_pem)


def test_bundle_half_life(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    b = _bundle(ca, "spiffe://cluster.local/ns/a/sa/b", dt.timedelta(hours=2))
    assert b.identity == "spiffe://cluster.local/ns/a/sa/b"
    assert b.refresh_at() == b.not_before + (b.not_after - b.not_before) / 2
    assert not b.expired() and b.expired(b.not_after)


def _handshake(server_bundle, client_bundle, expect_server):
    """A real TLS 1.3 handshake over a socket pair; returns (client-seen id, server-seen id)."""
    a, b = socket.socketpair()
    seen = {}

    def serve():
        try:
            with tls.server_context(server_bundle, ["h2"]).wrap_socket(b, server_side=True) as s:
                seen["server"] = tls.verify_peer_identity(s, None, "client")
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with tls.client_context(client_bundle, ["h2"]).wrap_socket(a) as c:
            assert c.version() == "TLSv1.3" and c.selected_alpn_protocol() == "h2"
            seen["client"] = tls.verify_peer_identity(c, expect_server, "server")
    finally:
        t.join(10)
    return seen


def test_mutual_tls_and_identity_check(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    web, sleep = _bundle(ca, "spiffe://cluster.local/ns/d/sa/web"), _bundle(ca, "spiffe://cluster.local/ns/d/sa/sleep")
    seen = _handshake(web, sleep, "spiffe://cluster.local/ns/d/sa/web")
    assert seen == {"client": "spiffe://cluster.local/ns/d/sa/web", "server": "spiffe://cluster.local/ns/d/sa/sleep"}
    with pytest.raises(tls.IdentityMismatch, match="expected spiffe://cluster.local/ns/d/sa/db but server presented .*sa/web"):
        _handshake(web, sleep, "spiffe://cluster.local/ns/d/sa/db")


def test_foreign_ca_is_refused(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "a", "cluster.local")
    other = CertificateAuthority.load_or_create(tmp_path / "b", "cluster.local")
    with pytest.raises(ssl.SSLError):
        _handshake(_bundle(ca, "spiffe://cluster.local/ns/d/sa/web"), _bundle(other, "spiffe://cluster.local/ns/d/sa/x"), None)


def test_peer_uri_san_needs_exactly_one(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    from cryptography.hazmat.primitives import serialization
    der = ca.cert.public_bytes(serialization.Encoding.DER)  # the root has no URI SAN
    assert peer_uri_san(der) is None


def test_trust_domain_of_any_spiffe_id():
    from meshcore.identity import trust_domain_of
    assert trust_domain_of("spiffe://example.org/trellis/node/n1") == "example.org"
    assert trust_domain_of("spiffe://cluster.local/ns/a/sa/b") == "cluster.local"
    for bad in ("https://cluster.local/ns/a", "spiffe:///ns/a/sa/b", ""):
        with pytest.raises(ValueError, match="not a SPIFFE ID"):
            trust_domain_of(bad)
