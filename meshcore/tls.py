"""mTLS contexts for HBONE and the control plane: TLS 1.3, mutual, SPIFFE URI SAN checks.

Hostname checking is off on purpose: peers are pods and nodes addressed by IP, and the
identity that matters is the certificate's SPIFFE URI SAN, which `verify_peer_identity`
compares with what the control plane says should be there.
"""
from __future__ import annotations

import os
import ssl
import tempfile

from .identity import CertBundle, peer_uri_san


class IdentityMismatch(ssl.SSLError):
    pass


def _load(ctx: ssl.SSLContext, bundle: CertBundle) -> None:
    # ssl can only load key material from files; keep them private and short-lived.
    with tempfile.TemporaryDirectory(prefix="trellis-tls-") as d:
        os.chmod(d, 0o700)
        cert, key = os.path.join(d, "chain.pem"), os.path.join(d, "key.pem")
        with open(cert, "wb") as f:
            f.write(bundle.chain_bytes())
        with open(key, "wb") as f:
            f.write(bundle.key_pem)
        ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=bundle.roots_bytes().decode())


def _base(purpose: ssl.Purpose, bundle: CertBundle | None, alpn: list[str] | None,
          roots: bytes = b"") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT if purpose is ssl.Purpose.SERVER_AUTH else ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if bundle is None:
        ctx.load_verify_locations(cadata=roots.decode())
    else:
        _load(ctx, bundle)
    return ctx


def roots_client_context(roots: bytes, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client that verifies the server but has no certificate of its own: a node that
    proves who it is otherwise (its ServiceAccount token, in a cluster)."""
    return _base(ssl.Purpose.SERVER_AUTH, None, alpn, roots)


def client_context(bundle: CertBundle, alpn: list[str] | None = None) -> ssl.SSLContext:
    return _base(ssl.Purpose.SERVER_AUTH, bundle, alpn)


def server_context(bundle: CertBundle, alpn: list[str] | None = None) -> ssl.SSLContext:
    return _base(ssl.Purpose.CLIENT_AUTH, bundle, alpn)


def verify_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: str | None, peer: str = "peer") -> str:
    """Return the peer's SPIFFE URI SAN; raise IdentityMismatch if it is not `expected`."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise IdentityMismatch(f"{peer} presented no certificate")
    got = peer_uri_san(der)
    if got is None:
        raise IdentityMismatch(f"{peer} certificate has no single SPIFFE URI SAN")
    if expected is not None and got != expected:
        raise IdentityMismatch(f"expected {expected} but {peer} presented {got}")
    return got
