"""`trellis workloads/services/pods/config-dump --kubeconfig` as a user runs them (a
subprocess) against the API-server stand-in, whose pods/proxy subresource forwards to two
real in-process ztunnels' metrics ports (the read-only inspection paths): the exact API
paths the CLI asks for, the tables, kubectl's exit codes and the errors that say what is
missing (kubeconfig, RBAC, a pod on that node)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
import yaml

from meshcore.resources import parse_documents
from trellis.lab import kubeworld
from trellis.lab.apiserver import ApiServerStandIn
from ztunnel.app import Config, Ztunnel

TRELLIS = str(Path(sys.executable).parent / "trellis")
TOKEN = "inspect-token"
NS = "trellis-system"
PODS = "/api/v1/namespaces/trellis-system/pods"
MESH = """
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: client, namespace: default}
spec: {address: 10.244.1.7, serviceAccount: client, node: n1, labels: {app: client}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web, namespace: default}
spec: {address: 10.244.2.9, serviceAccount: web, node: n2, labels: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""


class StaticControlPlane:
    """The control plane as ztunnel's client sees it: one fixed snapshot."""

    def __init__(self, resources):
        self.resources = resources
        self.connected, self.last_contact, self.last_error = True, None, None

    async def sign(self, csr_pem):
        raise ConnectionError("no CA here: no pods are enrolled in this test")

    async def watch(self, on_update, *, task_status=trio.TASK_STATUS_IGNORED):
        on_update({r.key: r for r in self.resources}, 3)
        task_status.started()
        await trio.sleep_forever()


def node_pod(name: str, node: str, ip: str, namespace: str = NS, phase: str = "Running",
             app: str = "trellis-node") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/component": "node"}},
            "spec": {"nodeName": node, "hostNetwork": True}, "status": {"phase": phase, "podIP": ip}}


async def trellis(*args: str) -> tuple[int, str, str]:
    p = await trio.run_process([TRELLIS, *args], capture_stdout=True, capture_stderr=True, check=False)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class Cluster:
    """The stand-in with two nodes' trellis-node pods, each proxied to a real ztunnel."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.api = ApiServerStandIn(token=TOKEN)
        self.kubeconfig = ""

    async def start(self, nursery) -> None:
        loaded = parse_documents(MESH, "mesh.yaml")
        assert not loaded.errors, [str(e) for e in loaded.errors]
        for node, ip in (("n1", "192.168.56.11"), ("n2", "192.168.56.12")):
            run_dir = self.tmp / node
            run_dir.mkdir()
            cfg = Config(node=node, control_plane=("127.0.0.1", 1), credential_dir=run_dir, run_dir=run_dir,
                         admin=("127.0.0.1", 0), metrics=("127.0.0.1", 0), ready=("127.0.0.1", 0))
            zt = await nursery.start(lambda task_status, cfg=cfg: Ztunnel(cfg, StaticControlPlane(
                loaded.resources)).run(handle_signals=False, task_status=task_status))
            # the pod network: the pod IP's :15020 is this ztunnel's metrics listener
            self.api.pod_network[(ip, 15020)] = ("127.0.0.1", zt.listeners["metrics"].socket.getsockname()[1])
            self.api.put(node_pod(f"trellis-node-{node}x", node, ip))
        self.api.put(node_pod("trellis-controlplane-abc", "n1", "10.244.1.2", app="trellis-controlplane"))
        self.api.put(node_pod("trellis-node-elsewhere", "n1", "192.168.56.11", namespace="other"))
        port = await nursery.start(self.api.serve)
        self.kubeconfig = kubeworld.kubeconfig(self.tmp / "kubeconfig", f"http://127.0.0.1:{port}", token=TOKEN)

    def paths(self) -> list[tuple[str, dict]]:
        return [(r.path, r.params) for r in self.api.requests]


async def test_tables_through_the_pod_proxy(tmp_path):
    c = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        code, out, err = await trellis("workloads", "--kubeconfig", c.kubeconfig)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["NAME", "ADDRESS", "NODE"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert set(rows) == {"default/client", "default/web"}
        # every ztunnel knows both workloads; each row comes from the workload's own node
        assert rows["default/client"][1:3] == ["10.244.1.7", "n1"] and rows["default/client"][-1] == "ztunnel/n1"
        assert rows["default/web"][1:3] == ["10.244.2.9", "n2"] and rows["default/web"][-1] == "ztunnel/n2"
        assert c.paths() == [
            (PODS, {"labelSelector": "app.kubernetes.io/name=trellis-node"}),
            (f"{PODS}/trellis-node-n1x:15020/proxy/workloads", {}),
            (f"{PODS}/trellis-node-n2x:15020/proxy/workloads", {}),
            (f"{PODS}/trellis-node-n1x:15020/proxy/pods", {}),
            (f"{PODS}/trellis-node-n2x:15020/proxy/pods", {}),
        ]

        c.api.requests.clear()
        code, out, err = await trellis("services", "--kubeconfig", c.kubeconfig, "--context", "standin",
                                       "--node", "n2", "-o", "json")
        assert code == 0, err
        services = json.loads(out)
        assert [(s["name"], s["clusterIP"], s["source"]) for s in services] == [("default/web", "10.96.0.10", "ztunnel/n2")]
        assert c.paths() == [
            (PODS, {"labelSelector": "app.kubernetes.io/name=trellis-node", "fieldSelector": "spec.nodeName=n2"}),
            (f"{PODS}/trellis-node-n2x:15020/proxy/services", {}),
        ]

        code, out, err = await trellis("config-dump", "--kubeconfig", c.kubeconfig, "--node", "n1", "-o", "yaml")
        assert code == 0, err
        dump = yaml.safe_load(out)
        assert dump["health"]["node"] == "n1" and dump["health"]["version"] == 3
        assert sorted(w["uid"] for w in dump["state"]["workloads"]) == ["default/client", "default/web"]
        nursery.cancel_scope.cancel()


async def test_errors_say_what_is_missing(tmp_path):
    c = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        code, _, err = await trellis("pods", "--kubeconfig", c.kubeconfig, "--node", "n9")
        assert code == 1
        assert "no trellis-node pod (app.kubernetes.io/name=trellis-node) on node 'n9' in namespace trellis-system" in err

        code, _, err = await trellis("pods", "--kubeconfig", c.kubeconfig, "-n", "mesh")
        assert code == 1 and "in namespace mesh" in err and "-n" in err

        code, _, err = await trellis("pods", "--kubeconfig", str(tmp_path / "absent"))
        assert code == 1 and f"kubeconfig: {tmp_path / 'absent'}" in err and "--kubeconfig or KUBECONFIG" in err

        code, _, err = await trellis("pods", "--kubeconfig", c.kubeconfig, "--admin", "127.0.0.1:15000")
        assert code == 2 and "--admin excludes" in err

        code, _, err = await trellis("config-dump", "--kubeconfig", c.kubeconfig, "--control-plane")
        assert code == 2 and "--control-plane" in err

        c.api.forbidden.add("pods/proxy")
        code, out, err = await trellis("certs", "--kubeconfig", c.kubeconfig, "--node", "n1")
        assert code == 1
        assert "needs RBAC `get` on `pods/proxy` in namespace trellis-system" in err
        assert 'cannot get resource "pods/proxy"' in err     # the API server's own words follow

        c.api.forbidden = {"pods"}
        code, _, err = await trellis("certs", "--kubeconfig", c.kubeconfig)
        assert code == 1 and "needs RBAC `list` on `pods` in namespace trellis-system" in err

        # a ztunnel that does not answer: the API server's 503, for that node; the other's rows still print
        c.api.forbidden = set()
        c.api.pod_network[("192.168.56.12", 15020)] = ("127.0.0.1", 1)
        code, out, err = await trellis("workloads", "--kubeconfig", c.kubeconfig)
        assert code == 1
        assert "pod trellis-system/trellis-node-n2x port 15020" in err and "error trying to reach service" in err
        assert "ztunnel/n1" in out
        nursery.cancel_scope.cancel()
