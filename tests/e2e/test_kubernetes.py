"""The cluster-shaped lab (`trellis lab up --kubernetes`): the API-server stand-in runs as a
process in the fabric netns over HTTPS, pods sit in kubelet (systemd driver) cgroups named
after their UID, the control plane reads the API (`--source kubernetes`, CA in a Secret),
ztunnels and node agents authenticate with their node's ServiceAccount token. The L4
checks pass driven by the API: what changes is made through the API, never the directory."""
import collections
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from e2e.labctl import Capture, Lab, metric_value, running, wait_until
from trellis.lab import kube
from trellis.lab.topology import CP_ADMIN_PORT

LAB_DIR = Path(__file__).resolve().parent / "lab"
STATE, PREFIX = "/run/trellis/e2e-k8s", "ttk8s"
CAPTURE = {"trellis_connect4", "trellis_connect6", "trellis_sockops"}
DENY_SLEEP = {"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "deny-sleep", "namespace": "default"},
              "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                       "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/default/sa/sleep"]}}]}]}}
POLICIES = "/apis/trellis.dev/v1alpha1/namespaces/default/authorizationpolicies"


class KubeLab(Lab):
    def up(self) -> None:
        self.cli("lab", "up", "--kubernetes", str(self.lab_dir), timeout=240)

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        return kube.request(self.state_dir, self.fabric_netns(), method, path, body)


@pytest.fixture(scope="module")
def lab():
    with running(LAB_DIR, STATE, PREFIX, KubeLab) as lab:
        yield lab


def pod_slice(pod: dict) -> str:
    """The pod's cgroup (kubepods-besteffort-pod<uid>.slice), where the node agent attaches;
    the lab's process is in its container cgroup below."""
    return str(Path(pod["cgroup"]).parent)


def attachments(cgroup: str) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip() or "[]")


def test_components_run_in_kubernetes_mode_and_pods_in_kubelet_cgroups(lab):
    argv = {p["name"]: p["argv"] for p in lab.state()["procs"]}
    assert argv["controlplane"][argv["controlplane"].index("--source") + 1] == "kubernetes"
    assert "--config-dir" not in argv["controlplane"] and "--ca-dir" not in argv["controlplane"]
    for node in ("node1", "node2"):
        for comp in ("ztunnel", "nodeagent"):
            assert "--token-file" in argv[f"{comp}/{node}"] and "--credential-dir" not in argv[f"{comp}/{node}"]
        assert not list((lab.state_dir / "nodes" / node).glob("bootstrap.*"))  # no node certificate was issued
    # the CA lives in a Secret of the API server
    code, secret = lab.api("GET", "/api/v1/namespaces/trellis-system/secrets/trellis-ca")
    assert code == 200 and "root-cert.pem" in secret["data"]
    # every pod: a v1 Pod whose uid names its kubelet cgroup, which holds the pod's process
    code, pods = lab.api("GET", "/api/v1/pods")
    assert code == 200 and pods["kind"] == "PodList"
    by_name = {p["metadata"]["name"]: p for p in pods["items"]}
    for pod in lab.state()["pods"]:
        obj = by_name[pod["name"]]
        assert obj["spec"]["nodeName"] == pod["node"] and obj["status"]["podIP"] == pod["address"]
        u = obj["metadata"]["uid"].replace("-", "_")
        assert f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/" in pod["cgroup"]
        assert lab.proc(f"pod/{pod['namespace']}/{pod['name']}")["pid"] in \
            [int(x) for x in Path(pod["cgroup"], "cgroup.procs").read_text().split()]


def test_vip_across_nodes_is_mtls_on_the_wire(lab, tmp_path):
    marker = f"secret-{uuid.uuid4().hex}"
    cap = Capture(lab, tmp_path / "k8s.pcap")
    res = lab.curl("sleep", f"http://10.96.0.10/{marker}", "-d", marker)  # sleep on node1, web-1/2 on node2
    raw = cap.stop()
    assert res.returncode == 0, res.stderr
    assert marker in res.stdout
    assert marker.encode() not in raw, "plaintext payload crossed the fabric"
    assert b"\x17\x03\x03" in raw, "no TLS application-data records on the fabric"
    assert ".15008" in cap.summary(), "traffic did not go to the HBONE port"


def test_deny_by_principal_created_through_the_api(lab):
    code, made = lab.api("POST", POLICIES, DENY_SLEEP)
    assert code == 201, made
    try:
        wait_until(lambda: lab.curl("sleep", "http://10.96.0.10/").returncode != 0, "the DENY policy to reach node2")
        for _ in range(3):
            assert lab.curl("sleep", "http://10.96.0.10/").returncode != 0
            ok = lab.curl("client2", "http://10.96.0.10/")
            assert ok.returncode == 0, ok.stderr
    finally:
        assert lab.api("DELETE", f"{POLICIES}/deny-sleep")[0] == 200
    wait_until(lambda: lab.curl("sleep", "http://10.96.0.10/").returncode == 0, "the DENY policy to go away")


def test_pod_label_update_through_the_api_takes_it_out_of_the_mesh(lab):
    path = "/api/v1/namespaces/default/pods/sleep"
    cgroup = pod_slice(lab.pod("sleep"))
    assert {a["name"] for a in attachments(cgroup)} >= CAPTURE
    code, pod = lab.api("GET", path)
    assert code == 200
    pod["metadata"]["labels"]["trellis.dev/dataplane-mode"] = "none"
    assert lab.api("PUT", path, pod)[0] == 200
    try:
        lab.wait_enrolled("node1", "default/sleep", enrolled=False)
        wait_until(lambda: not attachments(cgroup), "sleep's cgroup to be detached")
        # out of the mesh, not broken: STRICT web drops its plaintext, a plaintext pod still answers it
        assert lab.curl("sleep", f"http://{lab.ip('outside-2', 'legacy')}:8080/").returncode == 0
    finally:
        code, pod = lab.api("GET", path)
        del pod["metadata"]["labels"]["trellis.dev/dataplane-mode"]
        assert lab.api("PUT", path, pod)[0] == 200
    lab.wait_enrolled("node1", "default/sleep")
    wait_until(lambda: lab.curl("sleep", "http://10.96.0.10/").returncode == 0, "sleep back in the mesh")


def test_sigkill_of_a_node_agent_and_restart_leave_one_attachment_per_program(lab):
    pods = [pod_slice(p) for p in lab.state()["pods"] if p["node"] == "node2" and p["namespace"] == "default"]
    before = {a["id"] for cg in pods for a in attachments(cg)}
    assert before
    old = lab.proc("nodeagent/node2")["pid"]
    os.kill(old, signal.SIGKILL)  # no chance to detach; the lab's supervisor starts it again
    wait_until(lambda: lab.proc("nodeagent/node2")["pid"] != old, "the supervisor to restart nodeagent/node2")

    def taken_over():
        now = [attachments(cg) for cg in pods]
        return not before & {a["id"] for a in sum(now, [])} and all({a["name"] for a in n} >= CAPTURE for n in now)
    wait_until(taken_over, "the restarted node agent to replace its predecessor's attachments", timeout=60)
    for cg in pods:
        counts = collections.Counter(a["name"] for a in attachments(cg))
        assert set(counts.values()) == {1}, f"{cg}: {counts}"
    assert lab.curl("sleep", "http://10.96.0.10/").returncode == 0


WP_VIP = "10.96.0.30"
GW = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"
SERVICES = "/api/v1/namespaces/default/services"
WAYPOINT_ID = "spiffe://cluster.local/ns/default/sa/waypoint"
# what a user applies with kubectl: a waypoint, a Service that uses it, a route and an L7 policy on that Service
WAYPOINT_OBJECTS = [
    (GW, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "default"},
          "spec": {"gatewayClassName": "trellis-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
    (SERVICES, {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web-wp", "namespace": "default", "labels": {"trellis.dev/use-waypoint": "waypoint"}},
                "spec": {"clusterIP": WP_VIP, "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    (ROUTES, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web-wp", "namespace": "default"},
              "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web-wp", "port": 80}],
                       "rules": [{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                           "add": [{"name": "x-trellis-route", "value": "web-wp"}]}}],
                                  "backendRefs": [{"name": "web-wp", "port": 80}]}]}}),
    (POLICIES, {"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "web-wp-deny-admin", "namespace": "default"},
                "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web-wp"}], "action": "DENY",
                         "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}}),
]
# a client of the control plane, run in the fabric netns with a token file, as a waypoint would ask
SIGN = """
import sys, trio
from controlplane.ca import build_csr, generate_key
from meshcore.cpclient import ControlPlaneClient, ControlPlaneError
token, roots, uri = sys.argv[1:4]
c = ControlPlaneClient(("10.100.0.1", 15012), None, "default/waypoint", subscriber="waypoint",
                       token_file=token, roots=open(roots, "rb").read())
async def main():
    try:
        await c.sign(build_csr(generate_key(), uri))
        print("SIGNED")
    except ControlPlaneError as exc:
        print("REFUSED", exc)
trio.run(main)
"""


def sign_with(lab, token_file: Path, uri: str) -> str:
    res = subprocess.run(["ip", "netns", "exec", lab.fabric_netns(), sys.executable, "-c", SIGN, str(token_file),
                          str(lab.state_dir / "kube" / "roots.pem"), uri], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def refused_total(lab, reason: str) -> float:
    """The control plane's refusal counter, from its admin port's /metrics."""
    out = subprocess.run(["ip", "netns", "exec", lab.fabric_netns(), "curl", "-sS", "--max-time", "5",
                          f"http://127.0.0.1:{CP_ADMIN_PORT}/metrics"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "trellis_controlplane_requests_refused" in out.stdout, out.stderr
    return metric_value(out.stdout, "trellis_controlplane_requests_refused_total", op="sign", reason=reason)


def test_a_gateway_becomes_a_waypoint_pod_that_gets_its_certificate_by_token_and_carries_traffic(lab, tmp_path):
    """The control plane makes the Deployment; the lab's kubelet runs its pod with a
    TokenRequest-projected token and the root ConfigMap; the waypoint's first certificate
    comes from TokenReview of that token; a request to the Service passes through it."""
    try:
        for path, obj in WAYPOINT_OBJECTS:
            code, body = lab.api("POST", path, obj)
            assert code == 201, body
        dep = wait_until(lambda: (r := lab.api("GET", "/apis/apps/v1/namespaces/default/deployments/waypoint"))[0] == 200
                         and r[1], "the control plane to create the waypoint Deployment", timeout=30)
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "Gateway"
        pod = wait_until(lambda: next((p for p in lab.state()["pods"] if p.get("waypoint") == "waypoint"), None),
                         "the lab's kubelet to run the waypoint pod", timeout=60)
        code, obj = lab.api("GET", f"/api/v1/namespaces/default/pods/{pod['name']}")
        assert code == 200 and obj["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        # the kubelet records the pod's sandbox before it starts (and records) its process
        argv = wait_until(lambda: next((p["argv"] for p in lab.state()["procs"]
                                        if p["name"] == f"waypoint/default/{pod['name']}"), None),
                          "the waypoint pod's process recorded", timeout=30)
        assert "--token-file" in argv and "--credential-dir" not in argv
        token_file = Path(argv[argv.index("--token-file") + 1])
        cp_log = lab.state_dir / "controlplane.log"
        wait_until(lambda: f"event=csr_signed waypoint={WAYPOINT_ID}" in cp_log.read_text(),
                   "the waypoint's first certificate, signed for its token", timeout=60)
        # the route's filter and the policy show that a request passed the waypoint
        seen = wait_until(lambda: (r := lab.curl("sleep", f"http://{WP_VIP}/hi")).returncode == 0 and
                          '"x-trellis-route": "web-wp"' in r.stdout and json.loads(r.stdout),
                          "a request to the waypoint-fronted Service to pass the waypoint", timeout=60)
        assert seen["client"].rsplit(":", 1)[0] == pod["address"]   # the app's caller is the waypoint
        denied = lab.curl("sleep", f"http://{WP_VIP}/admin", "-o", "/dev/null", "-w", "%{http_code}")
        assert denied.stdout.strip() == "403"
        # the control plane reports through the status subresource, as kubectl shows it
        gw = wait_until(lambda: (r := lab.api("GET", f"{GW}/waypoint"))[0] == 200 and {
            c["type"]: c["status"] for c in r[1].get("status", {}).get("conditions", [])}.get("Programmed") == "True"
            and r[1], "the Gateway's status to say Programmed", timeout=60)
        assert gw["status"]["addresses"][0]["type"] == "IPAddress"
        route = wait_until(lambda: (r := lab.api("GET", f"{ROUTES}/web-wp"))[0] == 200 and r[1].get("status") and r[1],
                           "the HTTPRoute's status", timeout=30)
        [parent] = route["status"]["parents"]
        assert parent["controllerName"] == "trellis.dev/waypoint-controller"
        assert {c["type"]: c["status"] for c in parent["conditions"]} == {
            "Accepted": "True", "ResolvedRefs": "True", "ResolvedWaypoints": "True"}
        code, gc = lab.api("GET", "/apis/gateway.networking.k8s.io/v1/gatewayclasses")
        [cls] = [c for c in gc["items"] if c["metadata"]["name"] == "trellis-waypoint"]
        assert cls["status"]["conditions"][0]["status"] == "True"
        # its token is its own identity and nothing else; a non-waypoint pod's token gets nothing
        before = refused_total(lab, "other_identity"), refused_total(lab, "not_a_waypoint_pod")
        assert sign_with(lab, token_file, WAYPOINT_ID) == "SIGNED"
        got = sign_with(lab, token_file, "spiffe://cluster.local/ns/default/sa/web")
        assert got.startswith("REFUSED") and "may only have its own certificate signed" in got, got
        code, sleep_pod = lab.api("GET", "/api/v1/namespaces/default/pods/sleep")
        code, req = lab.api("POST", "/api/v1/namespaces/default/serviceaccounts/sleep/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["trellis-ca"], "expirationSeconds": 600, "boundObjectRef": {
                "kind": "Pod", "apiVersion": "v1", "name": "sleep", "uid": sleep_pod["metadata"]["uid"]}}})
        assert code == 201, req
        (tmp_path / "sleep-token").write_text(req["status"]["token"])
        got = sign_with(lab, tmp_path / "sleep-token", "spiffe://cluster.local/ns/default/sa/sleep")
        assert got.startswith("REFUSED") and "nor of a waypoint: pod default/sleep has no " in got, got
        assert refused_total(lab, "other_identity") == before[0] + 1
        assert refused_total(lab, "not_a_waypoint_pod") == before[1] + 1
    finally:
        for path, obj in reversed(WAYPOINT_OBJECTS):
            lab.api("DELETE", f"{path}/{obj['metadata']['name']}")
    # the Gateway's objects go (the reconciler deletes what it owns), and so does the pod
    wait_until(lambda: not [p for p in lab.state()["pods"] if p.get("waypoint")], "the waypoint pod to go", timeout=60)
    assert lab.curl("sleep", "http://10.96.0.10/").returncode == 0


def test_down_leaves_the_machine_clean(lab):
    st = lab.state()
    res = lab.down()
    assert res.returncode == 0, res.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in netns.splitlines() if line.startswith(f"{PREFIX}-")]
    assert not Path(st["cgroup_root"]).exists() and not lab.state_dir.exists()
    for proc in st["procs"]:
        assert not Path(f"/proc/{proc['pid']}").exists() or \
            Path(f"/proc/{proc['pid']}/stat").read_text().split()[2] == "Z", proc["name"]
