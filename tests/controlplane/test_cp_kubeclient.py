"""The Kubernetes client side of the config source: configuration and authentication
(kubeconfig with a token or a client certificate over HTTPS, in-cluster, exec refused),
lightkube under trio, the control plane process with --source kubernetes, and no
Kubernetes client in the data plane."""
import subprocess
import sys

import httpx2 as httpx
import pytest
import trio
import yaml

from kubewatch.client import KubeApi, KubeConfigError, describe, load_config
from controlplane.sources.kubernetes import COLLECTIONS
from kube_fixtures import TOKEN, cluster_pki, kubeconfig, world


@pytest.mark.parametrize("auth", ["client-certificate", "token"])
async def test_https_with_the_cluster_ca_and_a_client_certificate_or_token(tmp_path, auth):
    """A kubeconfig as kubeadm writes one: HTTPS verified against the cluster CA, the user
    authenticated by a client certificate (or a token); a server the CA did not sign is refused."""
    standin = world(tls=cluster_pki(tmp_path))
    user = ({"client-certificate": str(tmp_path / "trellis.crt"), "client-key": str(tmp_path / "trellis.key")}
            if auth == "client-certificate" else {"token": TOKEN})
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        path = kubeconfig(tmp_path, port, user=user)
        text = (tmp_path / "kubeconfig").read_text().replace("http://", "https://")
        cfg = yaml.safe_load(text)
        cfg["clusters"][0]["cluster"]["certificate-authority"] = str(tmp_path / "ca.crt")
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(cfg))
        api = KubeApi(load_config(path))
        items, rv = await api.list("/api/v1/namespaces")
        assert [i["metadata"]["name"] for i in items] == ["shop"] and rv == str(standin.rv)
        await api.aclose()
        # the same server, but the kubeconfig trusts another CA: refused during the handshake
        other = tmp_path / "other"
        other.mkdir()
        cluster_pki(other)
        cfg["clusters"][0]["cluster"]["certificate-authority"] = str(other / "ca.crt")
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(cfg))
        api = KubeApi(load_config(path))
        with pytest.raises(httpx.ConnectError) as refused:
            await api.list("/api/v1/namespaces")
        assert "CERTIFICATE_VERIFY_FAILED" in describe(refused.value) and "certificate-authority" in describe(refused.value)
        await api.aclose()
        nursery.cancel_scope.cancel()


def test_client_configuration(tmp_path, monkeypatch):
    # a kubeconfig with an exec plugin: refused with what to use instead
    path = kubeconfig(tmp_path, 1, user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                  "command": "aws"}})
    with pytest.raises(KubeConfigError, match="exec plugin, which is not supported here: use a token"):
        load_config(path)
    with pytest.raises(KubeConfigError, match="cannot load"):
        load_config(str(tmp_path / "missing"))
    # in a pod: the mounted ServiceAccount token and CA, over https to the service address
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("projected-token")
    (sa / "namespace").write_text("trellis-system")
    (sa / "ca.crt").write_text("")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = load_config(service_account_dir=str(sa))
    assert config.cluster.server == "https://10.96.0.1:443"
    assert config.user.token_file == str(sa / "token") and config.user.token == "projected-token"


async def test_lightkube_itself_lists_and_watches_under_trio(tmp_path):
    """The check behind the choice of client: lightkube's AsyncClient runs on trio (httpx's
    trio backend), with the list's resourceVersion kept, against the same stand-in."""
    from lightkube import AsyncClient
    from lightkube.resources.core_v1 import Namespace
    standin = world()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        client = AsyncClient(load_config(kubeconfig(tmp_path, port)))
        listing = client.list(Namespace)
        assert [n.metadata.name async for n in listing] == ["shop"]
        assert listing.resourceVersion == str(standin.rv)
        standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "two"}})
        with trio.fail_after(10):
            async for kind, ns in client.watch(Namespace, resource_version=listing.resourceVersion, server_timeout=5):
                assert (kind, ns.metadata.name) == ("ADDED", "two")
                break
        await client.close()
        nursery.cancel_scope.cancel()


async def test_control_plane_process_serves_from_the_kubernetes_source(tmp_path):
    """`python -m controlplane --source kubernetes --kubeconfig F`: the served config is
    the cluster's, and an edit in the cluster reaches /config_dump."""
    import socket
    import subprocess
    import sys
    from meshcore.admin import get_json

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    standin, admin_port = world(), free_port()

    async def dump():
        return await trio.to_thread.run_sync(lambda: get_json("127.0.0.1", admin_port, "/config_dump", timeout=2))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        cmd = [sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig", kubeconfig(tmp_path, port),
               "--ca-dir", str(tmp_path / "ca"), "--listen", f"127.0.0.1:{free_port()}",
               "--admin", f"127.0.0.1:{admin_port}"]
        proc = await trio.lowlevel.open_process(cmd, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(60):
                while True:
                    try:
                        d = await dump()
                        break
                    except OSError:
                        assert proc.poll() is None, "the control plane exited"
                        await trio.sleep(0.1)
                assert d["source"] == f"kubernetes http://127.0.0.1:{port}"
                names = {(r["kind"], r["metadata"]["name"]) for r in d["resources"]}
                assert {("Service", "web"), ("WorkloadEntry", "web-1"), ("HTTPRoute", "web")} <= names
                assert d["sourceStatus"]["stats"]["lists"] == len(COLLECTIONS)
                standin.delete("Service", "shop", "web")
                while ("Service", "web") in {(r["kind"], r["metadata"]["name"]) for r in d["resources"]}:
                    await trio.sleep(0.1)
                    d = await dump()
        finally:
            proc.terminate()
            with trio.fail_after(20):
                assert await proc.wait() == 0
        nursery.cancel_scope.cancel()


def test_a_bad_kubeconfig_exits_1_naming_the_problem(tmp_path):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig",
                          str(tmp_path / "nope"), "--ca-dir", str(tmp_path / "ca")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "cannot load the Kubernetes client configuration" in res.stderr, res.stderr


def test_the_kubernetes_client_stays_out_of_the_data_plane_and_meshcore():
    """lightkube and httpx only load in a control plane or node agent that reads the API server."""
    import subprocess
    import sys
    probe = ("import importlib, pkgutil, sys, ztunnel, meshcore, controlplane.__main__, nodeagent.__main__\n"
             "for pkg in (ztunnel, meshcore):\n"
             "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
             "        importlib.import_module(m.name)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightkube', 'httpx2', 'httpcore2', 'anyio'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
