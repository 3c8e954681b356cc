"""The waypoint pods' bootstrap credential from the lab CA (trellis/lab/credentials.py)."""
import subprocess

import pytest

from controlplane.ca import CertificateAuthority
from trellis.lab.credentials import issue_workload


def test_a_workload_credential_signed_by_the_lab_ca(tmp_path):
    CertificateAuthority.load_or_create(tmp_path / "ca", "lab.local")
    uri = issue_workload(tmp_path / "ca", "lab.local", "default", "waypoint", tmp_path / "out")
    assert uri == "spiffe://lab.local/ns/default/sa/waypoint"
    out = tmp_path / "out"
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    res = subprocess.run(["openssl", "verify", "-CAfile", out / "roots.pem", out / "cert.pem"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", out / "cert.pem"],
                         capture_output=True, text=True).stdout
    assert f"URI:{uri}" in san
    # the key is the certificate's
    pub_cert = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in", out / "cert.pem"], capture_output=True).stdout
    pub_key = subprocess.run(["openssl", "pkey", "-pubout", "-in", out / "key.pem"], capture_output=True).stdout
    assert pub_cert == pub_key and pub_cert


def test_no_ca_is_an_error_not_a_new_ca(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CA"):
        issue_workload(tmp_path / "ca", "lab.local", "default", "waypoint", tmp_path / "out")
    assert not (tmp_path / "ca").exists()
