"""`python -m waypoint` start-up: bad input names the file or flag and exits 2; --check."""
from __future__ import annotations

import subprocess
import sys

from wp_process import WAYPOINT_ID, SLEEP_ID, issue
from controlplane.ca import CertificateAuthority


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "waypoint", *args], capture_output=True, text=True, timeout=60)


def test_missing_credential_files_are_named(tmp_path):
    res = run("--namespace", "default", "--gateway", "waypoint", "--control-plane", "127.0.0.1:15012",
              "--credential-dir", str(tmp_path))
    assert res.returncode == 2
    assert f"{tmp_path}/cert.pem" in res.stderr and f"{tmp_path}/key.pem" in res.stderr


def test_a_credential_for_another_identity_is_refused(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    b = issue(ca, SLEEP_ID)
    d = tmp_path / "cred"
    d.mkdir()
    (d / "cert.pem").write_bytes(b.chain_bytes())
    (d / "key.pem").write_bytes(b.key_pem)
    (d / "roots.pem").write_bytes(b.roots_bytes())
    res = run("--namespace", "default", "--gateway", "waypoint", "--service-account", "waypoint",
              "--control-plane", "127.0.0.1:15012", "--credential-dir", str(d))
    assert res.returncode == 2
    assert SLEEP_ID in res.stderr and WAYPOINT_ID in res.stderr


def test_standalone_check_and_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {portz: 1}\n")
    res = run("--standalone-config", str(bad), "--listen", "127.0.0.1:1", "--check")
    assert res.returncode == 2 and "bad.yaml" in res.stderr and "portz" in res.stderr
    res = run("--standalone-config", str(bad))
    assert res.returncode == 2 and "--listen" in res.stderr
    # --check serves nothing: it needs no --listen (README: "--check validates FILE and exits")
    res = run("--standalone-config", str(bad), "--check")
    assert res.returncode == 2 and "portz" in res.stderr and "--listen" not in res.stderr
    good = tmp_path / "good.yaml"
    good.write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\n"
                    "spec: {gatewayClassName: trellis-waypoint}\n---\napiVersion: v1\nkind: Service\n"
                    "metadata: {name: web, labels: {trellis.dev/use-waypoint: waypoint}}\n"
                    "spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n")
    res = run("--standalone-config", str(good), "--check")
    assert res.returncode == 0 and "ok, serving Service default/web port 80" in res.stdout, res.stderr


def test_token_mode_flags_are_checked_and_files_named(tmp_path):
    """In a cluster: --token-file with --ca-root-file, instead of --credential-dir."""
    base = ["--namespace", "default", "--gateway", "waypoint", "--control-plane", "127.0.0.1:15012"]
    token, root = tmp_path / "token", tmp_path / "root-cert.pem"
    token.write_text("a-token")
    res = run(*base, "--token-file", str(token))
    assert res.returncode == 2 and "--token-file needs --ca-root-file" in res.stderr
    res = run(*base, "--token-file", str(token), "--ca-root-file", str(root))
    assert res.returncode == 2 and f"cannot read {root}" in res.stderr and "trellis-ca-root-cert" in res.stderr
    root.write_text("not a certificate\n")
    res = run(*base, "--token-file", str(token), "--ca-root-file", str(root))
    assert res.returncode == 2 and f"{root}: no PEM CERTIFICATE block found" in res.stderr
    res = run(*base, "--token-file", str(token), "--ca-root-file", str(root), "--credential-dir", str(tmp_path))
    assert res.returncode == 2 and "one of --credential-dir or --token-file" in res.stderr
