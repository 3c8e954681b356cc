"""A waypoint in a cluster gets its first certificate with its own pod's ServiceAccount token.

Against the API-server stand-in (TokenReview and TokenRequest in authentication.k8s.io/v1's
wire format): the control plane makes the waypoint's Deployment and publishes the mesh
root ConfigMap; the test does what the Deployment controller and the kubelet do
(trellis/lab/kubeletspec.py: a ReplicaSet, its pod, a TokenRequest bound to the pod, the
projected files); `python -m waypoint`'s own start-up path (`build` with the Deployment's
args) then gets its certificate and its Gateway's view. Every other token, and every
other identity or view asked for, is refused with its reason and counted."""
import contextlib
import copy
import re
import socket
import time

import pytest
import trio

from controlplane.api import ApiServer
from controlplane.ca import CertificateAuthority, build_csr, generate_key
from controlplane.rootcert import RootCertPublisher, plan as root_plan
from controlplane.tokenreview import TokenReviewer
from controlplane.waypointauth import waypoint_pod_refusal
from controlplane.waypoints import Settings, WaypointReconciler
from kube_fixtures import synced_source, world
from kubewatch.client import KubeApiError
from kubewatch.reflector import Backoff
from meshcore.cpclient import ControlPlaneClient, ControlPlaneError
from meshcore.identity import CertBundle
from test_cp_tokenreview import refusals
from trellis.lab import kubeletspec
from waypoint.__main__ import build

TD = "cluster.local"
WAYPOINT_ID = f"spiffe://{TD}/ns/shop/sa/waypoint"
CM_PATH = "/api/v1/configmaps"
FAST = dict(backoff=lambda: Backoff(0.01, 0.2), batch=0.01, watch_timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(predicate, what):
    deadline = trio.current_time() + 20
    while not predicate():
        assert trio.current_time() < deadline, f"timed out waiting for {what}"
        await trio.sleep(0.02)


@contextlib.asynccontextmanager
async def cluster(tmp_path):
    standin = world()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
    async with trio.open_nursery() as nursery:
        kube, store = await synced_source(nursery, tmp_path, standin, **FAST)
        await nursery.start(WaypointReconciler(kube, store, Settings(trust_domain=TD), retry=0.05).run)
        publisher = RootCertPublisher(kube, store, ca.roots_pem[0].decode(), retry=0.05)
        await nursery.start(publisher.run)
        api = ApiServer(ca, store, TokenReviewer(kube))
        listeners = await nursery.start(api.serve, "127.0.0.1", 0)
        yield standin, kube, ca, api, listeners[0].socket.getsockname()[1], nursery
        nursery.cancel_scope.cancel()
    await kube.aclose()


def configmap(standin, ns):
    return standin.objects.get(CM_PATH, {}).get((ns, "trellis-ca-root-cert"))


async def run_replica(standin, kube, tmp_path, name="waypoint-0"):
    """The Deployment controller and the kubelet: ReplicaSet, pod, TokenRequest, files."""
    dep = standin.objects["/apis/apps/v1/deployments"][("shop", "waypoint")]
    rs = standin.put(kubeletspec.replicaset_for(dep))
    pod = standin.put(kubeletspec.pod_for(rs, name, "node1", "10.244.1.9"))
    (source,) = kubeletspec.token_sources(pod)
    reply = await kube.post(f"/api/v1/namespaces/shop/serviceaccounts/{pod['spec']['serviceAccountName']}/token",
                            kubeletspec.token_request(pod, source))
    (vol,) = pod["spec"]["volumes"]
    files = kubeletspec.projected_files(vol, reply["status"]["token"],
                                        {"trellis-ca-root-cert": configmap(standin, "shop")})
    d = tmp_path / name
    d.mkdir()
    for path, text in files.items():
        (d / path).write_text(text)
    return pod, kubeletspec.container_argv(pod, {vol["name"]: d}, "python3"), reply["status"]["token"]


async def test_a_waypoint_replica_gets_its_certificate_and_view_with_its_own_token(tmp_path):
    async with cluster(tmp_path) as (standin, kube, ca, api, port, nursery):
        await until(lambda: configmap(standin, "shop") and ("shop", "waypoint") in
                    standin.objects.get("/apis/apps/v1/deployments", {}), "the Deployment and the root ConfigMap")
        assert configmap(standin, "shop")["data"] == {"root-cert.pem": ca.roots_pem[0].decode()}
        pod, argv, _ = await run_replica(standin, kube, tmp_path)
        assert argv[:3] == ["python3", "-m", "waypoint"]
        args = argv[3:]
        flag = {k: v for k, v in zip(args[::2], args[1::2])}
        assert flag["--token-file"] == str(tmp_path / "waypoint-0" / "token")
        # the process's own start-up path; the cluster DNS name and fixed ports become this host's
        over = {"--control-plane": f"127.0.0.1:{port}", "--hbone-port": str(free_port()),
                "--admin": f"127.0.0.1:{free_port()}", "--metrics": f"127.0.0.1:{free_port()}",
                "--ready": f"127.0.0.1:{free_port()}"}
        wp = build([x for k, v in {**flag, **over}.items() for x in (k, v)])
        assert wp.bootstrap is None and wp.cp.token_file == tmp_path / "waypoint-0" / "token"
        with pytest.raises(RuntimeError, match="no certificate"):
            wp.bundle()
        await nursery.start(lambda task_status: wp.run(handle_signals=False, task_status=task_status))
        def has_cert():
            try:
                return wp.snapshots > 0 and wp.bundle() is not None
            except RuntimeError:
                return False
        await until(has_cert, "the first certificate")
        got = wp.bundle()
        assert got.identity == WAYPOINT_ID and got.roots_pem == tuple(ca.roots_pem)
        assert (await wp._ready(None)).status == 200
        assert wp.view.gateway == "waypoint" and wp.cp.connected
        assert api.stats["signed"] >= 1 and not refusals(api)
        wp.draining.set()


async def test_tokens_that_are_not_this_waypoint_are_refused_with_reasons(tmp_path):
    async with cluster(tmp_path) as (standin, kube, ca, api, port, nursery):
        await until(lambda: configmap(standin, "shop") and ("shop", "waypoint") in
                    standin.objects.get("/apis/apps/v1/deployments", {}), "the Deployment")
        pod, argv, token = await run_replica(standin, kube, tmp_path)
        roots = ca.roots_pem[0]

        def client(tok: str, name="shop/waypoint", kind="waypoint") -> ControlPlaneClient:
            f = tmp_path / f"t-{abs(hash((tok, name)))}"
            f.write_text(tok)
            return ControlPlaneClient(("127.0.0.1", port), None, name, subscriber=kind, token_file=f, roots=roots)

        # its own identity: signed; another ServiceAccount's: refused
        chain, _ = await client(token).sign(build_csr(generate_key(), WAYPOINT_ID))
        assert CertBundle(b"", tuple(chain), ()).identity == WAYPOINT_ID
        with pytest.raises(ControlPlaneError, match="may only have its own certificate signed: the CSR asks for "
                                                    ".*ns/shop/sa/web"):
            await client(token).sign(build_csr(generate_key(), f"spiffe://{TD}/ns/shop/sa/web"))
        # another Gateway's view: refused
        spy = client(token, "shop/other")
        with trio.move_on_after(3):
            await spy.watch(lambda *_: None)
        assert "the token's pod serves waypoint shop/waypoint, it may not watch shop/other" in spy.last_error
        # a token of a pod that is no waypoint (web-1, ServiceAccount web)
        standin.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "shop"}})
        web = standin.objects["/api/v1/pods"][("shop", "web-1")]
        web_token = (await kube.post("/api/v1/namespaces/shop/serviceaccounts/web/token", kubeletspec.token_request(
            web, {"serviceAccountToken": {"audience": "trellis-ca"}})))["status"]["token"]
        with pytest.raises(ControlPlaneError, match="ServiceAccount shop/web is not a node account .*nor of a "
                                                    "waypoint: pod shop/web-1 has no gateway.networking.k8s.io"):
            await client(web_token).sign(build_csr(generate_key(), "spiffe://cluster.local/ns/shop/sa/web"))
        # a pod posing as a replica (the labels copied) but not made by a ReplicaSet of our Deployment
        fake = copy.deepcopy(pod)
        fake["metadata"] = {"name": "impostor", "namespace": "shop", "labels": pod["metadata"]["labels"]}
        fake = standin.put(fake)
        fake_token = (await kube.post("/api/v1/namespaces/shop/serviceaccounts/waypoint/token",
                                      kubeletspec.token_request(fake, kubeletspec.token_sources(fake)[0])))["status"]["token"]
        with pytest.raises(ControlPlaneError, match="pod shop/impostor is not controlled by a ReplicaSet"):
            await client(fake_token).sign(build_csr(generate_key(), WAYPOINT_ID))
        # an expired token (the API server's clock passed its expirationTimestamp)
        standin.tokens[token].expires = time.time() - 1
        with pytest.raises(ControlPlaneError, match="does not authenticate .*service account token has expired"):
            await client(token).sign(build_csr(generate_key(), WAYPOINT_ID))
        # a token whose pod is gone no longer authenticates at all
        standin.delete("Pod", "shop", "impostor")
        with pytest.raises(ControlPlaneError, match="service account token has been invalidated"):
            await client(fake_token).sign(build_csr(generate_key(), WAYPOINT_ID))
        got = refusals(api)
        assert got[("sign", "other_identity")] == 1 and got[("sign", "invalid_token")] == 2
        assert got[("sign", "not_a_waypoint_pod")] == 2 and got[("watch", "other_view")] >= 1
        with pytest.raises(KubeApiError, match="less than 10 minutes"):   # as kube-apiserver validates it
            await kube.post("/api/v1/namespaces/shop/serviceaccounts/waypoint/token", kubeletspec.token_request(
                pod, {"serviceAccountToken": {"audience": "trellis-ca", "expirationSeconds": 60}}))


async def test_the_root_configmap_is_in_every_namespace_and_put_back(tmp_path):
    async with cluster(tmp_path) as (standin, kube, ca, api, port, nursery):
        root = ca.roots_pem[0].decode()
        await until(lambda: configmap(standin, "shop"), "the ConfigMap")
        for ns in ("bank", "kube-system"):
            standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        await until(lambda: configmap(standin, "bank"), "a new namespace's ConfigMap")
        edited = copy.deepcopy(configmap(standin, "shop"))
        edited["data"] = {"root-cert.pem": "tampered", "extra": "x"}
        standin.put(edited)
        await until(lambda: configmap(standin, "shop")["data"] == {"root-cert.pem": root}, "the edit undone")
        standin.delete("ConfigMap", "bank", "trellis-ca-root-cert")
        await until(lambda: configmap(standin, "bank"), "the deleted ConfigMap back")
        assert configmap(standin, "bank")["data"] == {"root-cert.pem": root}
        assert configmap(standin, "kube-system") is None   # Kubernetes' own namespaces are left alone
        # it watches only its own ConfigMaps' name
        watches = [r for r in standin.watches(CM_PATH)]
        assert watches and all(r.params["fieldSelector"] == "metadata.name=trellis-ca-root-cert" for r in watches)


def test_root_plan_and_waypoint_pod_refusals_pure():
    have = {"a": {"metadata": {"name": "trellis-ca-root-cert", "namespace": "a", "resourceVersion": "7",
                               "labels": {"trellis.dev/managed-by": "trellis-controlplane"}},
                  "data": {"root-cert.pem": "R"}},
            "b": {"metadata": {"name": "trellis-ca-root-cert", "namespace": "b", "resourceVersion": "9"},
                  "data": {"root-cert.pem": "old"}}}
    creates, updates = root_plan(["a", "b", "c", "kube-public"], have, "R")
    assert [c["metadata"]["namespace"] for c in creates] == ["c"]
    (u,) = updates
    assert u["metadata"]["resourceVersion"] == "9" and u["data"] == {"root-cert.pem": "R"}
    # the owner chain, link by link
    gw = {"metadata": {"name": "wp", "namespace": "shop", "uid": "g1"}, "spec": {"gatewayClassName": "trellis-waypoint"}}
    dep = {"metadata": {"name": "wp", "namespace": "shop", "uid": "d1", "labels": {"trellis.dev/managed-by": "trellis-controlplane"},
                        "ownerReferences": [{"kind": "Gateway", "name": "wp", "uid": "g1", "controller": True}]},
           "spec": {"template": {"spec": {"serviceAccountName": "wp"}}}}
    rs = {"metadata": {"name": "wp-1", "ownerReferences": [{"kind": "Deployment", "name": "wp", "uid": "d1", "controller": True}]}}
    pod = {"metadata": {"name": "wp-1-x", "namespace": "shop", "labels": {"gateway.networking.k8s.io/gateway-name": "wp"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "wp-1", "controller": True}]},
           "spec": {"serviceAccountName": "wp"}}
    assert waypoint_pod_refusal(pod, rs, dep, gw, "shop/wp") is None

    def changed(obj, path, value):
        out = copy.deepcopy(obj)
        *keys, last = path
        cur = out
        for k in keys:
            cur = cur[k]
        cur[last] = value
        return out
    cases = [
        ((pod, rs, dep, gw, "shop/other"), "runs as ServiceAccount wp, not shop/other"),
        ((changed(pod, ["metadata", "labels"], {}), rs, dep, gw, "shop/wp"), "has no gateway"),
        ((pod, None, dep, gw, "shop/wp"), "not controlled by a ReplicaSet"),
        ((pod, changed(rs, ["metadata", "ownerReferences"], []), dep, gw, "shop/wp"), "not controlled by a Deployment"),
        ((pod, rs, changed(dep, ["metadata", "labels"], {}), gw, "shop/wp"), "was not made by the control plane"),
        ((changed(pod, ["metadata", "labels"], {"gateway.networking.k8s.io/gateway-name": "x"}), rs, dep, gw, "shop/wp"),
         "does not belong to Gateway x"),
        ((pod, rs, dep, changed(gw, ["metadata", "uid"], "g2"), "shop/wp"), "no longer exists"),
        ((pod, rs, dep, changed(gw, ["spec", "gatewayClassName"], "istio"), "shop/wp"), "not of class"),
        ((pod, rs, changed(dep, ["spec", "template", "spec", "serviceAccountName"], "x"), gw, "shop/wp"), "runs as x"),
    ]
    for argv, why in cases:
        assert re.search(why, waypoint_pod_refusal(*argv) or ""), (why, waypoint_pod_refusal(*argv))
