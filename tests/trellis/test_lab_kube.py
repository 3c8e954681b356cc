"""The cluster-shaped lab's pieces without a lab: the stand-in's kubectl-style writes seen by
a watch, the lab's objects and tokens as the stand-in process serves them (HTTPS with the
lab's cluster CA, TokenReview with the node claim), and the kubelet cgroup plan."""
import json
import ssl
from pathlib import Path

import httpx2 as httpx
import trio

from trellis.lab import kube, kubeserve, kubeworld
from trellis.lab.apiserver import ApiServerStandIn
from trellis.lab.topology import load_lab, plan

LAB = Path(__file__).resolve().parents[1] / "e2e" / "lab"
POLICY = {"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"action": "DENY", "rules": [{}]}}
COLL = "/apis/trellis.dev/v1alpha1/namespaces/shop/authorizationpolicies"


async def test_writes_as_kubectl_makes_them_become_watch_events():
    standin = ApiServerStandIn()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as c:
            rv = standin.rv
            r = await c.post(COLL, json=POLICY)
            assert r.status_code == 201 and r.json()["metadata"]["resourceVersion"] == str(rv + 1)
            assert (await c.post(COLL, json=POLICY)).status_code == 409
            changed = {**POLICY, "spec": {"action": "ALLOW", "rules": [{}]}}
            r = await c.put(f"{COLL}/deny", json=changed)
            assert r.status_code == 200 and r.json()["spec"]["action"] == "ALLOW"
            wrong = {**POLICY, "kind": "PeerAuthentication"}
            r = await c.put(f"{COLL}/deny", json=wrong)
            assert r.status_code == 400 and "PeerAuthentication" in r.json()["message"]
            assert (await c.delete(f"{COLL}/deny")).status_code == 200
            assert (await c.delete(f"{COLL}/deny")).status_code == 404
            assert (await c.put(f"{COLL}/deny", json=POLICY)).status_code == 404
            r = await c.get("/apis/trellis.dev/v1alpha1/authorizationpolicies",
                            params={"watch": "true", "resourceVersion": str(rv), "timeoutSeconds": "1"})
            events = [(e["type"], e["object"]["spec"]["action"]) for e in map(json.loads, r.text.splitlines())]
            assert events == [("ADDED", "DENY"), ("MODIFIED", "ALLOW"), ("DELETED", "ALLOW")]
        nursery.cancel_scope.cancel()


def test_the_plan_puts_pods_in_kubelet_cgroups_named_by_a_stable_uid():
    p = kube.kubelet_plan(plan(load_lab(LAB), "tt"))
    sleep = next(q for q in p.pods if q.spec.name == "sleep")
    uid = kubeworld.pod_uid("tt", "default", "sleep")
    assert uid == kubeworld.pod_uid("tt", "default", "sleep") != kubeworld.pod_uid("tt2", "default", "sleep")
    assert sleep.cgroup == (f"node1/kubelet/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                            f"{uid.replace('-', '_')}.slice/cri-containerd-sleep.scope")
    assert kubeworld.pod_object("tt", sleep)["metadata"]["uid"] == uid


async def test_the_stand_in_process_serves_the_lab_over_https_and_reviews_node_tokens(tmp_path):
    p = plan(load_lab(LAB), "tt")
    kubeworld.write(tmp_path, p, LAB / "config", "127.0.0.1")
    server = kubeserve.standin(tmp_path)
    admin = kubeworld.admin_token(tmp_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt")),
                                     headers={"Authorization": f"Bearer {admin}"}) as c:
            pods = (await c.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=node2"})).json()["items"]
            assert sorted(x["metadata"]["name"] for x in pods) == ["outside-2", "tcp-echo", "web-1", "web-2"]
            web1 = next(x for x in pods if x["metadata"]["name"] == "web-1")
            assert web1["spec"]["serviceAccountName"] == "web" and web1["metadata"]["labels"] == {"app": "web"}
            assert web1["status"]["podIP"] == next(q.address for q in p.pods if q.spec.name == "web-1")
            names = {x["metadata"]["name"] for x in (await c.get("/api/v1/namespaces")).json()["items"]}
            assert names == {"default", "legacy", "trellis-system"}
            svcs = (await c.get("/api/v1/services")).json()["items"]
            assert {s["spec"]["clusterIP"] for s in svcs} == {"10.96.0.10", "10.96.0.20"}
            node1 = (tmp_path / "token-node1").read_text()
            r = await c.post("/apis/authentication.k8s.io/v1/tokenreviews",
                             json={"spec": {"token": node1, "audiences": ["trellis-ca"]}})
            status = r.json()["status"]
            assert status["authenticated"] and status["user"]["extra"]["authentication.kubernetes.io/node-name"] == ["node1"]
            assert status["user"]["username"] == "system:serviceaccount:trellis-system:ztunnel"
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt")),
                                     headers={"Authorization": f"Bearer {node1}"}) as c:
            assert (await c.get("/api/v1/pods")).status_code == 401  # a node token is not the API's credential here
        nursery.cancel_scope.cancel()
