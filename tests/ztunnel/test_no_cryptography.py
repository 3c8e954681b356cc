"""ztunnel never imports `cryptography`: its Rust extension alone is ~8 MiB of every
ztunnel's resident memory (issue 3's target is <= 40 MiB idle). Certificates are read
with meshcore.der and keys come from the openssl command (meshcore.keygen)."""
import json
import subprocess
import sys
from pathlib import Path

from controlplane.ca import CertificateAuthority, write_credential

ROOT = Path(__file__).resolve().parents[2]

# Import every module of ztunnel and meshcore (what `python -m ztunnel` loads, and what it
# loads later on first use), then walk the run-time certificate paths: the bootstrap
# credential, a key and CSR, and the peer identity check.
PROBE = r"""
import importlib, json, pkgutil, sys
import ztunnel, meshcore
for pkg in (ztunnel, meshcore):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
import trio
from meshcore import der, identity, keygen
from meshcore.cpclient import load_credential
bundle = load_credential(sys.argv[1])
key, csr = trio.run(keygen.new_key_and_csr, "spiffe://cluster.local/ns/default/sa/web")
leaf = der.pem_blocks(bundle.chain_pem[0])[0]
print(json.dumps({"identity": bundle.identity, "peer": identity.peer_uri_san(leaf),
                  "csr": csr.decode(), "ztunnel_modules": sorted(m for m in sys.modules if m.startswith(("ztunnel.", "meshcore."))),
                  "cryptography": sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")}))
"""


def test_ztunnel_runs_without_importing_cryptography(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    write_credential(ca.issue_node_credential("node1"), tmp_path / "cred")
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "cred")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert {"ztunnel.__main__", "ztunnel.app", "meshcore.certs"} <= set(seen["ztunnel_modules"])
    assert seen["identity"] == seen["peer"] == "spiffe://cluster.local/trellis/node/node1"
    assert ca.check_csr(seen["csr"])[1] == "spiffe://cluster.local/ns/default/sa/web"
    assert seen["cryptography"] == [], "ztunnel imported cryptography; find who with `python -X importtime -m ztunnel`"
