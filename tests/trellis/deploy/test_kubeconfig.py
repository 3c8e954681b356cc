"""Finding the API server: kubeconfig contexts, token files, client certificates, in-cluster."""
import base64

import pytest
import yaml

from trellis.deploy import kubeconfig
from trellis.deploy.kubeconfig import KubeconfigError

from apiserver_standin import self_signed


def _write(path, users, contexts=None, current="a"):
    cfg = {"current-context": current,
           "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443/", "certificate-authority": "ca.crt"}}],
           "contexts": contexts or [{"name": "a", "context": {"cluster": "k", "user": "u", "namespace": "mesh"}},
                                    {"name": "b", "context": {"cluster": "k", "user": "v"}}],
           "users": users}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_contexts_relative_files_and_client_certificates(tmp_path):
    cert, key = self_signed(tmp_path)
    (tmp_path / "ca.crt").write_bytes(cert.read_bytes())
    (tmp_path / "token").write_text("from-file\n")
    cfg = _write(tmp_path / "config", [
        {"name": "u", "user": {"tokenFile": str(tmp_path / "token")}},
        {"name": "v", "user": {"client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                               "client-key": "apiserver.key"}}])
    a = kubeconfig.from_kubeconfig(cfg)
    assert (a.server, a.token, a.namespace) == ("https://10.0.0.1:6443", "from-file", "mesh")
    assert a.ssl_context.cert_store_stats()["x509_ca"] == 1
    b = kubeconfig.from_kubeconfig(cfg, context="b")
    assert b.token is None and b.namespace == "default" and b.ssl_context is not None
    with pytest.raises(KubeconfigError, match="no context named 'c'"):
        kubeconfig.from_kubeconfig(cfg, context="c")


def test_missing_files_are_named(tmp_path):
    cfg = _write(tmp_path / "config", [{"name": "u", "user": {"token": "t"}}])
    with pytest.raises(KubeconfigError, match=r"certificate-authority .*ca.crt: No such file"):
        kubeconfig.from_kubeconfig(cfg)
    with pytest.raises(KubeconfigError, match="nope: No such file or directory; point --kubeconfig"):
        kubeconfig.from_kubeconfig(tmp_path / "nope")


def test_in_cluster_uses_the_service_account(tmp_path, monkeypatch):
    cert, _ = self_signed(tmp_path)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    (sa / "namespace").write_text("trellis-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    c = kubeconfig.in_cluster(sa)
    assert (c.server, c.token, c.namespace) == ("https://[fd00::1]:443", "sa-token", "trellis-system")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        kubeconfig.in_cluster(sa)
