"""L4 policy at the destination: AuthorizationPolicy, PeerAuthentication, foreign certificates."""
import sys
import textwrap

from e2e.labctl import wait_until

DENY_SLEEP = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {principals: ["spiffe://cluster.local/ns/default/sa/sleep"]}}]
"""
PERMISSIVE = """apiVersion: trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: PERMISSIVE}
"""
STRICT = PERMISSIVE.replace("PERMISSIVE", "STRICT")


def test_deny_policy_on_a_principal_blocks_it_and_only_it(lab):
    lab.apply(DENY_SLEEP)
    try:
        wait_until(lambda: lab.curl("sleep", "http://10.96.0.10/").returncode != 0,
                   "the DENY policy to reach node2's ztunnel")
        for _ in range(3):
            assert lab.curl("sleep", "http://10.96.0.10/").returncode != 0
            ok = lab.curl("client2", "http://10.96.0.10/")
            assert ok.returncode == 0, ok.stderr
    finally:
        lab.delete(DENY_SLEEP)
    wait_until(lambda: lab.curl("sleep", "http://10.96.0.10/").returncode == 0, "the DENY policy to go away")


def test_strict_drops_plaintext_from_outside_and_permissive_lets_it_through(lab):
    web1 = lab.ip("web-1")
    res = lab.curl("outside-1", f"http://{web1}:8080/", namespace="legacy", max_time=3)
    assert res.returncode != 0, "STRICT should drop plaintext to an enrolled pod"
    lab.apply(PERMISSIVE)
    try:
        wait_until(lambda: lab.curl("outside-1", f"http://{web1}:8080/", namespace="legacy",
                                    max_time=3).returncode == 0, "PERMISSIVE to let plaintext in", timeout=30)
    finally:
        lab.apply(STRICT)
    wait_until(lambda: lab.curl("outside-1", f"http://{web1}:8080/", namespace="legacy",
                                max_time=2).returncode != 0, "STRICT to be enforced again", timeout=30)
    # mesh traffic is unaffected by STRICT
    assert lab.curl("sleep", "http://10.96.0.10/").returncode == 0


def _foreign_client_script(tmp_path):
    """A client with a certificate for the right SPIFFE ID, signed by a CA the mesh does not trust."""
    import datetime as dt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    from controlplane.ca import generate_key, key_pem

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = generate_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = generate_key()
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                "spiffe://cluster.local/ns/default/sa/sleep")]), critical=True).sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))


def test_certificate_from_a_foreign_ca_is_refused_and_ztunnel_stays_up(lab, tmp_path):
    _foreign_client_script(tmp_path)
    web1 = lab.ip("web-1")
    script = textwrap.dedent(f"""
        import socket, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        ctx.load_cert_chain("{tmp_path}/cert.pem", "{tmp_path}/key.pem")
        s = socket.create_connection(("{web1}", 15008), timeout=5)
        try:
            t = ctx.wrap_socket(s)
            # TLS 1.3: the server's verdict on our certificate arrives with the first read
            t.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n")
            data = t.recv(100)
            print("ACCEPTED" if data else "CLOSED")
        except (ssl.SSLError, ConnectionResetError, OSError) as exc:
            print("REFUSED", type(exc).__name__, exc)
    """)
    res = lab.exec("outside-1", sys.executable, "-c", script, namespace="legacy")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(("REFUSED", "CLOSED")), res.stdout
    # garbage on the HBONE port is dropped too
    res = lab.exec("outside-1", sys.executable, "-c",
                   f"import socket,os;s=socket.create_connection(('{web1}',15008),timeout=5);"
                   f"s.sendall(os.urandom(4096));s.settimeout(5);print(len(s.recv(100)))", namespace="legacy")
    assert res.returncode in (0, 1)
    # and the node's ztunnel still serves everyone else
    assert lab.ztunnel("node2", "/healthz")
    ok = lab.curl("sleep", "http://10.96.0.10/")
    assert ok.returncode == 0, ok.stderr
