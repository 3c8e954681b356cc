"""Node authorization in a cluster: ztunnel's ServiceAccount token, checked with the
TokenReview API of the stand-in, names its node; the CA signs only for pods on that node
and counts every refusal by reason."""
import contextlib
import copy

import pytest
import trio

from controlplane.api import ApiServer
from controlplane.ca import CertificateAuthority, build_csr, generate_key
from controlplane.sources.kubernetes import KubernetesSource
from controlplane.store import VersionedStore
from controlplane.tokenreview import NodeAuthRefused, TokenReviewer, caller_from_review
from kube_fixtures import kubeconfig, world
from trellis.lab.apiserver import Token
from kubewatch.client import KubeApi, load_config
from kubewatch.reflector import Backoff
from meshcore.cpclient import ControlPlaneClient, ControlPlaneError
from meshcore.identity import CertBundle

WEB = "spiffe://cluster.local/ns/shop/sa/orders"   # only pod shop/orders-1, on node1, runs as it
TOKENS = {
    "node1": Token("trellis-system", "ztunnel", pod="ztunnel-aaaaa", node="node1"),
    "node2": Token("trellis-system", "ztunnel", pod="ztunnel-bbbbb", node="node2"),
    "expired": Token("trellis-system", "ztunnel", pod="ztunnel-aaaaa", node="node1", expired=True),
    "other-audience": Token("trellis-system", "ztunnel", pod="ztunnel-aaaaa", node="node1", audiences=("https://kubernetes.default.svc",)),
    "web-pod": Token("shop", "web", pod="web-1", node="node1"),
    "unbound": Token("trellis-system", "ztunnel"),
    # Kubernetes before 1.30 names no node in the token: the bound pod's spec.nodeName does
    "old-node1": Token("trellis-system", "ztunnel", pod="ztunnel-aaaaa"),
}
ORDERS_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-1", "namespace": "shop"},
              "spec": {"nodeName": "node1", "serviceAccountName": "orders", "containers": [{"name": "a", "image": "x"}]},
              "status": {"phase": "Running", "podIP": "10.244.1.6"}}
ZTUNNEL_POD = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "ztunnel-aaaaa", "namespace": "trellis-system", "labels": {"app": "ztunnel"}},
               "spec": {"nodeName": "node1", "hostNetwork": True, "serviceAccountName": "ztunnel",
                        "containers": [{"name": "ztunnel", "image": "trellis"}]},
               "status": {"phase": "Running", "podIP": "192.168.1.11"}}


@contextlib.asynccontextmanager
async def cluster_control_plane(tmp_path):
    standin = world()
    standin.put(copy.deepcopy(ZTUNNEL_POD))
    standin.put(copy.deepcopy(ORDERS_POD))
    standin.tokens.update((name, token) for name, token in TOKENS.items())
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    async with trio.open_nursery() as nursery:
        kport = await nursery.start(standin.serve)
        kube = KubeApi(load_config(kubeconfig(tmp_path, kport)))
        store = VersionedStore(first_version=1)
        source = KubernetesSource(kube, store, backoff=lambda: Backoff(0.01, 0.2), batch=0.01)
        with trio.fail_after(20):
            await nursery.start(source.run)
        api = ApiServer(ca, store, TokenReviewer(kube))
        listeners = await nursery.start(api.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]

        def node_client(token: str, node: str) -> ControlPlaneClient:
            (tmp_path / token).write_text(token + "\n")  # as the kubelet writes a projected token
            return ControlPlaneClient(("127.0.0.1", port), None, node, token_file=tmp_path / token,
                                      roots=b"".join(ca.roots_pem))
        yield api, node_client, standin
        nursery.cancel_scope.cancel()
    await kube.aclose()


def refusals(api: ApiServer) -> dict:
    return {(s.labels["op"], s.labels["reason"]): s.value for m in api.registry.collect() for s in m.samples
            if s.name == "trellis_controlplane_requests_refused_total"}


async def test_a_token_for_node2_cannot_get_a_certificate_for_a_pod_on_node1(tmp_path):
    async with cluster_control_plane(tmp_path) as (api, node_client, standin):
        with pytest.raises(ControlPlaneError, match=r"node node2: .*ns/shop/sa/orders does not belong to any workload on the asking node"):
            await node_client("node2", "node2").sign(build_csr(generate_key(), WEB))
        chain, roots = await node_client("node1", "node1").sign(build_csr(generate_key(), WEB))
        assert CertBundle(b"", tuple(chain), tuple(roots)).identity == WEB
        # the node came from the token, the review asked for our audience
        reviews = [r for r in standin.requests if r.path.endswith("/tokenreviews")]
        assert len(reviews) == 2
        assert refusals(api) == {("sign", "not_on_node"): 1.0}
        assert api.stats["signed"] == 1


@pytest.mark.parametrize("token, reason, message", [
    ("expired", "invalid_token", "does not authenticate .*service account token has expired"),
    ("forged", "invalid_token", "does not authenticate"),
    ("other-audience", "invalid_token", "is invalid for the target audiences"),
    ("web-pod", "not_a_waypoint_pod", "ServiceAccount shop/web is not a node account .*, nor of a waypoint: "
                                      "pod shop/web-1 has no gateway.networking.k8s.io/gateway-name label"),
    ("unbound", "not_pod_bound", "not bound to a pod"),
])
async def test_refused_tokens_say_why_and_are_counted(tmp_path, token, reason, message):
    async with cluster_control_plane(tmp_path) as (api, node_client, _):
        with pytest.raises(ControlPlaneError, match=message):
            await node_client(token, "node1").sign(build_csr(generate_key(), WEB))
        assert refusals(api) == {("sign", reason): 1.0}


async def test_without_a_node_claim_the_bound_pods_node_counts(tmp_path):
    async with cluster_control_plane(tmp_path) as (api, node_client, standin):
        chain, _ = await node_client("old-node1", "node1").sign(build_csr(generate_key(), WEB))
        assert CertBundle(b"", tuple(chain), ()).identity == WEB
        assert any(r.path == "/api/v1/namespaces/trellis-system/pods/ztunnel-aaaaa" for r in standin.requests)


async def test_a_token_watches_its_own_nodes_view_only(tmp_path):
    async with cluster_control_plane(tmp_path) as (api, node_client, _):
        got = trio.Event()
        seen = {}

        def on_update(resources, version):
            seen.update(resources)
            got.set()

        async with trio.open_nursery() as nursery:
            c = node_client("node1", "node1")
            nursery.start_soon(c.watch, on_update)
            with trio.fail_after(10):
                await got.wait()
            nursery.cancel_scope.cancel()
        assert ("WorkloadEntry", "shop", "web-1") in seen
        spy = node_client("node2", "node1")  # node2's token asking for node1's view
        with trio.move_on_after(3):
            await spy.watch(lambda *_: None)
        assert "node node2 may only watch its own view, not 'node1'" in spy.last_error
        assert refusals(api)[("watch", "other_view")] >= 1


def test_review_answers_are_read_strictly():
    audience = "trellis-ca"
    ok = {"status": {"authenticated": True, "audiences": ["trellis-ca"], "user": {
        "username": "system:serviceaccount:trellis-system:ztunnel",
        "extra": {"authentication.kubernetes.io/pod-name": ["z"], "authentication.kubernetes.io/node-name": ["n1"]}}}}
    caller = caller_from_review(ok, audience)
    assert (caller.account, caller.pod, caller.node) == ("trellis-system/ztunnel", ("trellis-system", "z"), "n1")
    for bad, reason in [({}, "review_failed"), ({"status": {"authenticated": False}}, "invalid_token"),
                        ({"status": {**ok["status"], "audiences": ["other"]}}, "wrong_audience"),
                        ({"status": {**ok["status"], "user": {"username": "kubernetes-admin"}}}, "untrusted_account")]:
        with pytest.raises(NodeAuthRefused) as exc:
            caller_from_review(bad, audience)
        assert exc.value.reason == reason


async def test_control_plane_process_in_a_cluster_ca_from_a_secret_tokens_and_metrics(tmp_path):
    """`python -m controlplane --source kubernetes` with no --ca-dir: the CA is created
    in a Secret, nodes authenticate with tokens, refusals show on /metrics."""
    import base64
    import socket
    import subprocess
    import sys
    from meshcore.admin import http_get

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    standin = world()
    standin.put(copy.deepcopy(ORDERS_POD))
    standin.tokens.update(TOKENS)
    admin_port, cp_port = free_port(), free_port()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        cmd = [sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig", kubeconfig(tmp_path, port),
               "--namespace", "trellis-system", "--listen", f"127.0.0.1:{cp_port}", "--admin", f"127.0.0.1:{admin_port}"]
        proc = await trio.lowlevel.open_process(cmd, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(60):
                while ("trellis-system", "trellis-ca") not in standin.secrets:
                    assert proc.poll() is None, "the control plane exited"
                    await trio.sleep(0.1)
                roots = base64.b64decode(standin.secrets[("trellis-system", "trellis-ca")]["data"]["root-cert.pem"])
                (tmp_path / "t1").write_text("node1")
                (tmp_path / "t2").write_text("node2")
                c1 = ControlPlaneClient(("127.0.0.1", cp_port), None, "node1", token_file=tmp_path / "t1", roots=roots)
                c2 = ControlPlaneClient(("127.0.0.1", cp_port), None, "node2", token_file=tmp_path / "t2", roots=roots)
                while True:
                    try:
                        chain, _ = await c1.sign(build_csr(generate_key(), WEB))
                        break
                    except ControlPlaneError as exc:
                        assert "cannot reach" in str(exc), str(exc)  # not listening yet
                        await trio.sleep(0.2)
                assert CertBundle(b"", tuple(chain), ()).identity == WEB
                with pytest.raises(ControlPlaneError, match="does not belong to any workload on the asking node"):
                    await c2.sign(build_csr(generate_key(), WEB))
                status, body = await trio.to_thread.run_sync(
                    lambda: http_get("127.0.0.1", admin_port, "/metrics", timeout=5))
                text = body.decode()
                assert status == 200 and 'trellis_controlplane_requests_refused_total{op="sign",reason="not_on_node"} 1.0' in text
        finally:
            proc.terminate()
            with trio.fail_after(20):
                assert await proc.wait() == 0
        nursery.cancel_scope.cancel()
