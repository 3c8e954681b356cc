"""The node agent in a cluster: its node's pods from the API-server stand-in (field
selector on spec.nodeName), each pod's cgroup found from its UID under the kubelet's
layouts (real cgroup v2 directories, systemd and cgroupfs drivers), its network namespace
from a real process in it; SIGKILL and restart leave one attachment per program."""
from __future__ import annotations

import collections
import copy
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "controlplane"))
from kube_fixtures import kubeconfig  # noqa: E402
from trellis.lab.apiserver import ApiServerStandIn  # noqa: E402
from na_helpers import bpftool_show  # noqa: E402
from nodeagent import cgroups, podcgroups  # noqa: E402

CAPTURE = ["trellis_connect4", "trellis_connect6", "trellis_sockops"]
STRICT = sorted(CAPTURE + ["trellis_strict_ingress"])


def pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": node, "serviceAccountName": name, "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.%d" % (10 + len(name))}}


def test_kubelet_layouts_are_found_by_uid(tmp_path):
    uid = "0d9c4f5e-1b2a-4c3d-9e8f-7a6b5c4d3e2f"
    u = uid.replace("-", "_")
    for rel in (f"kubepods.slice/kubepods-pod{u}.slice",
                f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice",
                f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice",
                f"kubepods/pod{uid}", f"kubepods/burstable/pod{uid}", f"kubepods/besteffort/pod{uid}"):
        root = tmp_path / rel.replace("/", "_")
        (root / rel / "cri-containerd-1.scope").mkdir(parents=True)
        assert podcgroups.pod_cgroup(root, uid) == root / rel
        assert podcgroups.pod_cgroup(root, uid.replace("7", "8")) is None
        assert podcgroups.pod_netns(root / rel) is None  # no process yet: nothing to hand over


@pytest.fixture
def kubelet(request):
    """A node's kubepods tree under a test cgroup; each pod: its own netns, a process."""
    tag = f"tt-kp-{secrets.token_hex(3)}"
    root = cgroups.cgroup2_mount() / tag
    made, procs = [], []

    def add(uid: str, rel: str, container: str) -> Path:
        cg = root / rel
        (cg / container).mkdir(parents=True)
        made.append(cg / container)
        ns = f"{tag}-{len(procs)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        target = str(cg / container)
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                              "import sys; print('up', flush=True); sys.stdin.read()"],
                             preexec_fn=lambda: Path(target, "cgroup.procs").write_text(str(os.getpid())),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append((p, ns))
        assert p.stdout.readline().strip() == "up"
        return cg

    yield root, add
    for p, ns in procs:
        p.kill()
        p.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for d in sorted({p for m in made for p in [m, *m.parents] if root in [p, *p.parents]}, key=lambda p: -len(p.parts)):
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


AGENT = """
import logging, sys, trio
from pathlib import Path
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {testdir!r})
from test_na_reconcile import ns, pa, res, we
from kubewatch.client import KubeApi, load_config
from nodeagent.__main__ import serve
from nodeagent.kube import NodePods

class ControlPlaneView:  # what the control plane derives from the Pods: no network namespace
    async def watch(self, on_update, task_status=trio.TASK_STATUS_IGNORED):
        on_update(res(ns("shop"), pa("shop", "strict-b", "STRICT", selector={{"matchLabels": {{"app": "b"}}}}),
                      *[we("shop", n, node="node1", netns=None, labels={{"app": n}}, sa=n, address=a)
                        for n, a in (("a", "10.244.1.11"), ("b", "10.244.1.12"), ("c", "10.244.1.13"))]), 1)
        await trio.sleep_forever()

pods = NodePods(KubeApi(load_config({kubeconfig!r})), "node1", Path({root!r}))
trio.run(serve, "node1", ControlPlaneView(), Path({run_dir!r}), (), (), pods)
"""


def start_agent(tmp_path, kcfg, root, n) -> subprocess.Popen:
    script = AGENT.format(testdir=os.path.dirname(__file__), kubeconfig=kcfg, root=str(root), run_dir=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=os.getcwd(),
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"agent{n}.log", "w"))


async def until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await trio.sleep(0.2)


def kill_all(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def names(cgroup: Path) -> list[str]:
    return sorted(a["name"] for a in bpftool_show(cgroup))


async def test_sigkill_and_restart_leave_one_attachment_per_program_per_pod(kubelet, tmp_path):
    root, add = kubelet
    standin = ApiServerStandIn()
    uid = {n: standin.put(pod(n, node))["metadata"]["uid"] for n, node in (("a", "node1"), ("b", "node1"),
                                                                            ("c", "node1"), ("x", "node2"))}
    ua, ub = uid["a"], uid["b"]
    # a: guaranteed QoS, systemd driver; b: burstable, cgroupfs driver; c: no process yet
    cg_a = add(ua, f"kubepods.slice/kubepods-pod{ua.replace('-', '_')}.slice", "cri-containerd-0a.scope")
    cg_b = add(ub, f"kubepods/burstable/pod{ub}", "0b0b0b")
    (root / f"kubepods/besteffort/pod{uid['c']}").mkdir(parents=True)
    agents = []
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(standin.serve)
            kcfg = kubeconfig(tmp_path, port)
            agents.append(start_agent(tmp_path, kcfg, root, 1))
            await until(lambda: names(cg_a) == CAPTURE and names(cg_b) == STRICT, "the first agent to enroll a and b")
            # the agent asked for its node's pods only
            assert {r.params.get("fieldSelector") for r in standin.requests} == {"spec.nodeName=node1"}
            first = {a["id"] for cg in (cg_a, cg_b) for a in bpftool_show(cg)}
            agents[0].send_signal(signal.SIGKILL)  # no chance to detach
            agents[0].wait(timeout=10)
            assert {a["id"] for cg in (cg_a, cg_b) for a in bpftool_show(cg)} == first  # attachments outlive it

            agents.append(start_agent(tmp_path, kcfg, root, 2))
            await until(lambda: not first & {a["id"] for cg in (cg_a, cg_b) for a in bpftool_show(cg)}
                        and names(cg_a) == CAPTURE and names(cg_b) == STRICT, "the restarted agent to take over")
            for cg in (cg_a, cg_b):  # exactly one attachment per program per pod cgroup
                assert set(collections.Counter(a["name"] for a in bpftool_show(cg)).values()) == {1}
            log = (tmp_path / "agent2.log").read_text()
            assert "left by an earlier node agent" in log

            # a pod that goes away in the API is detached; one whose process appears is enrolled
            standin.delete("Pod", "shop", "a")
            await until(lambda: names(cg_a) == [], "pod a to be detached after its deletion")
            cg_c = add(uid["c"], f"kubepods/besteffort/pod{uid['c']}", "0c0c0c")
            await until(lambda: names(cg_c) == CAPTURE, "pod c to be enrolled once it has a process")
            agents[1].send_signal(signal.SIGTERM)
            agents[1].wait(timeout=30)
            assert names(cg_b) == [] and names(cg_c) == []
            nursery.cancel_scope.cancel()
    finally:
        kill_all(agents)


def test_overlay_fills_in_the_netns_of_this_nodes_listed_pods_only(tmp_path):
    from nodeagent.kube import NodePods
    from test_na_reconcile import ns, res, we

    pods = NodePods(None, "node1", tmp_path)
    objs = [{"metadata": {"namespace": "shop", "name": n, "uid": f"uid-{n}"}, "spec": {"nodeName": "node1", **extra}}
            for n, extra in (("a", {}), ("b", {}), ("h", {"hostNetwork": True}))]
    pods._replace(objs)
    assert sorted(pods.pods) == [("shop", "a"), ("shop", "b")]  # a host-network pod is never enrolled
    procs = tmp_path / "kubepods" / "besteffort" / "poduid-a" / "c1" / "cgroup.procs"
    procs.parent.mkdir(parents=True)
    procs.write_text(f"{os.getpid()}\n")  # a live process stands for the pod's
    (tmp_path / "kubepods" / "poduid-b").mkdir()  # b: its cgroup exists, no process yet
    view = res(ns("shop"), *[we("shop", n, node=node, netns=None) for n, node in
                             (("a", "node1"), ("b", "node1"), ("c", "node1"), ("x", "node2"))])
    out = pods.overlay(view)
    got = {k[2]: r.spec.network_namespace for k, r in out.items() if r.kind == "WorkloadEntry"}
    assert got == {"a": f"/proc/{os.getpid()}/ns/net", "b": None, "c": None, "x": None}
    assert pods.cgroup_of("shop", "a") == procs.parent.parent and pods.cgroup_of("shop", "c") is None
    pods._apply("DELETED", objs[0])
    assert pods.overlay(view)[("WorkloadEntry", "shop", "a")].spec.network_namespace is None


async def test_driven_by_the_api_through_a_cluster_control_plane(kubelet, tmp_path):
    """The cluster path end to end, minus traffic: the stand-in serves the namespace and
    the pods; `python -m controlplane --source kubernetes` (CA in a Secret, TokenReview)
    and `python -m nodeagent --source kubernetes --token-file` (no node certificate)
    enroll a pod found in the kubelet's cgroups, and unenroll it when its labels opt out."""
    import base64
    import socket

    from trellis.lab.apiserver import Token

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    root, add = kubelet
    standin = ApiServerStandIn()
    standin.put({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "shop", "labels": {"trellis.dev/dataplane-mode": "ambient"}}})
    ua = standin.put(pod("a", "node1"))["metadata"]["uid"]
    cg_a = add(ua, f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ua.replace('-', '_')}.slice",
               "cri-containerd-0a.scope")
    standin.tokens["tok-node1"] = Token("trellis-system", "ztunnel", pod="ztunnel-1", node="node1")
    (tmp_path / "token").write_text("tok-node1")
    cp_port = free_port()
    procs = []
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(standin.serve)
            kcfg = kubeconfig(tmp_path, port)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig", kcfg,
                 "--listen", f"127.0.0.1:{cp_port}", "--admin", f"127.0.0.1:{free_port()}"],
                stderr=open(tmp_path / "cp.log", "w")))
            await until(lambda: ("trellis-system", "trellis-ca") in standin.secrets, "the CA Secret")
            roots = base64.b64decode(standin.secrets[("trellis-system", "trellis-ca")]["data"]["root-cert.pem"])
            (tmp_path / "roots.pem").write_bytes(roots)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nodeagent", "--node", "node1", "--control-plane", f"127.0.0.1:{cp_port}",
                 "--token-file", str(tmp_path / "token"), "--ca-root-file", str(tmp_path / "roots.pem"),
                 "--source", "kubernetes", "--kubeconfig", kcfg, "--kubelet-cgroup-root", str(root),
                 "--run-dir", str(tmp_path)], stderr=open(tmp_path / "agent.log", "w")))
            await until(lambda: names(cg_a) == CAPTURE, "the agent to enroll pod a")
            assert any(r.path.endswith("/tokenreviews") for r in standin.requests)  # it came in with its token
            opted_out = pod("a", "node1")
            opted_out["metadata"]["labels"]["trellis.dev/dataplane-mode"] = "none"
            standin.put(opted_out)
            await until(lambda: names(cg_a) == [], "pod a to be detached when it opts out")
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(timeout=30) == 0
            nursery.cancel_scope.cancel()
    finally:
        kill_all(procs)
