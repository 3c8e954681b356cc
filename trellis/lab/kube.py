"""`trellis lab up --kubernetes`: the lab shaped like a cluster. The same netns, veths and
pods, but the pods' processes sit in cgroups the kubelet's way (systemd driver, named
after the pod UID, kubeworld.kubelet_cgroup), and the data plane is driven by an API
server instead of the config directory:

- the API-server stand-in runs as a process in the fabric netns (kubeserve.py, HTTPS
  with a cluster CA the lab makes) serving the lab's Pods, Namespaces, Services and
  policies, and reviewing each node's ServiceAccount token;
- the control plane runs with `--source kubernetes` and keeps its CA in a Secret there;
- each node's ztunnel and node agent authenticate with that node's token
  (`--token-file`, no node certificate), and the node agent finds its pods through the
  API (`--source kubernetes`) and their cgroups by UID under the node's kubelet root.
The config directory is still copied to the state dir, for `lab status` to know which
pods belong in the mesh; no component reads it."""
from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from . import kubeworld
from .topology import CP_ADMIN_PORT, CP_PORT, FABRIC_IP, LabPlan

API_PORT = 6443
CA_SECRET = ("trellis-system", "trellis-ca")


class KubeLabError(RuntimeError):
    pass


def kube_dir(sdir: Path) -> Path:
    return sdir / "kube"


def kubelet_plan(p: LabPlan) -> LabPlan:
    """The plan with every pod's cgroup where the kubelet (systemd driver) would make it."""
    pods = [dataclasses.replace(q, cgroup=kubeworld.kubelet_cgroup(
        q.spec.node, kubeworld.pod_uid(p.prefix, q.spec.namespace, q.spec.name), q.spec.name)) for q in p.pods]
    return dataclasses.replace(p, pods=pods)


def request(sdir: Path, netns: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One API request with curl from `netns` (the fabric's, where the API server listens),
    authenticated with the lab's admin token, as `kubectl` would make it."""
    d = kube_dir(sdir)
    cmd = ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "10", "--cacert", str(d / "pki" / "ca.crt"),
           "-H", f"Authorization: Bearer {kubeworld.admin_token(d)}", "-X", method, "-w", "\n%{http_code}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    res = subprocess.run([*cmd, f"https://{FABRIC_IP}:{API_PORT}{path}"], input=json.dumps(body) if body else None,
                         capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise KubeLabError(f"{method} {path}: curl failed: {res.stderr.strip()}")
    text, _, code = res.stdout.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else {}


def _wait(what: str, check, alive, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        alive()
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise KubeLabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def _secret_roots(sdir: Path, netns: str) -> bytes | None:
    try:
        code, secret = request(sdir, netns, "GET", f"/api/v1/namespaces/{CA_SECRET[0]}/secrets/{CA_SECRET[1]}")
    except KubeLabError:
        return None  # not listening yet
    return base64.b64decode(secret["data"]["root-cert.pem"]) if code == 200 else None


def start(p: LabPlan, st, sdir: Path, start_proc, check_alive, echo) -> None:
    """The API server, then the control plane (its CA Secret made), then each node's
    ztunnel and node agent with the node's token. `start_proc(name, argv, netns, cgroup,
    log)` records and spawns (up._start); `check_alive()` raises if one has exited."""
    root, py, td, d = Path(st.cgroup_root), sys.executable, p.lab.trust_domain, kube_dir(sdir)
    echo(f"kubernetes: cluster CA, objects and node tokens in {d}")
    kubeworld.write(d, p, sdir / "config", FABRIC_IP)
    kcfg = kubeworld.kubeconfig(d / "kubeconfig", f"https://{FABRIC_IP}:{API_PORT}",
                                token=kubeworld.admin_token(d), ca=d / "pki" / "ca.crt")
    echo(f"kubernetes: API server stand-in in {p.fabric_netns} at https://{FABRIC_IP}:{API_PORT}")
    start_proc("apiserver", [py, "-m", "trellis.lab.kubeserve", "--dir", str(d), "--listen",
                             f"{FABRIC_IP}:{API_PORT}"], p.fabric_netns, str(root / "controlplane"), d / "apiserver.log")
    _wait("the API server to answer", lambda: _answers(sdir, p.fabric_netns), check_alive)
    echo(f"processes: control plane --source kubernetes in {p.fabric_netns} at {FABRIC_IP}:{CP_PORT}")
    start_proc("controlplane", [py, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig", kcfg,
                                # the lab has no cluster DNS: waypoint pods reach it by address
                                "--waypoint-control-plane", f"{FABRIC_IP}:{CP_PORT}",
                                "--trust-domain", td, "--listen", f"{FABRIC_IP}:{CP_PORT}",
                                "--admin", f"127.0.0.1:{CP_ADMIN_PORT}",
                                *(["--cert-ttl", p.lab.cert_ttl] if p.lab.cert_ttl else [])],
               p.fabric_netns, str(root / "controlplane"), sdir / "controlplane.log")
    roots = _wait(f"the CA Secret {'/'.join(CA_SECRET)}", lambda: _secret_roots(sdir, p.fabric_netns), check_alive)
    (d / "roots.pem").write_bytes(roots)
    for n in p.nodes:
        nd, cg = sdir / "nodes" / n.name, str(root / n.name / "system")
        nd.mkdir(parents=True, exist_ok=True)
        common = ["--node", n.name, "--control-plane", f"{FABRIC_IP}:{CP_PORT}", "--token-file",
                  str(d / f"token-{n.name}"), "--ca-root-file", str(d / "roots.pem"), "--run-dir", str(nd)]
        echo(f"processes: ztunnel and nodeagent --source kubernetes for {n.name} (kubelet root {root / n.name / 'kubelet'})")
        workers = ["--workers", p.lab.ztunnel_workers] if p.lab.ztunnel_workers else []
        start_proc(f"ztunnel/{n.name}", [py, "-m", "ztunnel", *common, "--trust-domain", td, *workers], n.netns, cg,
                   nd / "ztunnel.log")
        start_proc(f"nodeagent/{n.name}", [py, "-m", "nodeagent", *common, "--trust-domain", td, "--source", "kubernetes",
                                           "--kubeconfig", kcfg, "--kubelet-cgroup-root", str(root / n.name / "kubelet")],
                   n.netns, cg, nd / "nodeagent.log")


def _answers(sdir: Path, netns: str) -> bool:
    try:
        return request(sdir, netns, "GET", "/api/v1/namespaces")[0] == 200
    except KubeLabError:
        return False
