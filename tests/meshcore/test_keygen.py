"""Keys and CSRs from the openssl command: what the control plane CA accepts, and clear errors."""
import ssl

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.ca import CertificateAuthority
from meshcore import keygen, tls
from meshcore.identity import CertBundle

WEB = "spiffe://cluster.local/ns/default/sa/web"
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


async def test_key_and_csr_are_what_the_ca_wants(tmp_path):
    key_pem, csr_pem = await keygen.new_key_and_csr(WEB)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")   # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid and csr.subject == x509.Name([])
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(WEB)]
    assert len(csr.extensions) == 1

    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    _, uri = ca.check_csr(csr_pem)
    assert uri == WEB
    bundle = CertBundle(key_pem, tuple(ca.sign_workload_csr(csr_pem)), ca.roots_pem)
    assert bundle.identity == WEB and not bundle.expired()


def _memory_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[str, str]:
    """A TLS 1.3 handshake through memory BIOs; returns the identity each side verified."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    return tls.verify_peer_identity(client, None, "server"), tls.verify_peer_identity(server, None, "client")


async def test_bundles_from_openssl_keys_do_mutual_tls(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    bundles = {}
    for uri in (WEB, SLEEP):
        key_pem, csr = await keygen.new_key_and_csr(uri)
        bundles[uri] = CertBundle(key_pem, tuple(ca.sign_workload_csr(csr)), ca.roots_pem)
    # load_cert_chain refuses a key that does not match the certificate
    seen = _memory_handshake(tls.client_context(bundles[SLEEP], ["h2"]), tls.server_context(bundles[WEB], ["h2"]))
    assert seen == (WEB, SLEEP)


async def test_each_call_makes_a_new_key():
    (k1, _), (k2, _) = [await keygen.new_key_and_csr(WEB) for _ in range(2)]
    assert k1 != k2


async def test_the_event_loop_keeps_running_while_openssl_works():
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as n:
        n.start_soon(tick)
        await keygen.new_key_and_csr(WEB)
        n.cancel_scope.cancel()
    assert ticks > 1


@pytest.mark.parametrize("uri", [WEB + ",DNS:evil.test", WEB + " x", "spiffe://td/$HOME", "", "no-scheme"])
def test_uris_that_openssl_would_misread_are_refused(uri):
    with pytest.raises(ValueError, match="refusing to put"):
        keygen.openssl_req_argv(uri)


async def test_missing_openssl_names_the_command():
    with pytest.raises(keygen.KeyGenError, match=r"`/nonexistent/openssl req -new .*` could not start: no "
                                                 r"`/nonexistent/openssl` on PATH; install the openssl package"):
        await keygen.new_key_and_csr(WEB, openssl="/nonexistent/openssl")


async def test_failing_openssl_gives_its_stderr(tmp_path):
    fake = tmp_path / "openssl"
    fake.write_text("#!/bin/sh\necho 'req: unknown option -wibble' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(keygen.KeyGenError, match=rf"`{fake} req .*` exited with 3: req: unknown option -wibble"):
        await keygen.new_key_and_csr(WEB, openssl=str(fake))
    fake.write_text("#!/bin/sh\necho 'almost' >&2\n")
    with pytest.raises(keygen.KeyGenError, match="printed no PKCS#8 private key .*stderr: almost"):
        await keygen.new_key_and_csr(WEB, openssl=str(fake))
