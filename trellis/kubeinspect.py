"""Inspection targets in a cluster: the trellis-node DaemonSet's pods, reached through the
API server's pod proxy (`GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`), so no
port-forward and no route to the node network are needed; only RBAC `list` on `pods` and
`get` on `pods/proxy` in the mesh's namespace. The proxy dials the pod IP, which a
loopback-only admin port never answers: ztunnel serves its read-only inspection paths on
the metrics port too (ztunnel/app.py, inspection_routes). The API client is trellis
install's (deploy/apply.py), with its kubeconfig loading (deploy/kubeconfig.py)."""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from meshcore import ports

from .deploy import kubeconfig
from .deploy.apply import ApplyError, Client
from .inspect import InspectError, Target

NAMESPACE = "trellis-system"
NODE_SELECTOR = "app.kubernetes.io/name=trellis-node"   # the DaemonSet's pod labels (templates/node.yaml)
INSPECT_PORT = ports.METRICS   # metrics plus the read-only inspection GETs (ztunnel.app.INSPECTION_PATHS)


def _get(client: Client, path: str, where: str, what: str, permission: str, namespace: str) -> Any:
    """GET through the API server; a refusal says which RBAC permission is missing."""
    try:
        status, doc = client.request("GET", path)
    except ApplyError as exc:
        raise InspectError(f"{where}: {exc}") from None
    if status == 200:
        return doc   # the pod's answer: a list or an object
    message = (doc.get("message") if isinstance(doc, dict) else None) or str(doc)[:300]
    if status == 403:
        raise InspectError(f"{where}: forbidden: {what} needs RBAC {permission} in namespace {namespace} ({message})")
    raise InspectError(f"{where}: {what} answered {status}: {message}")


class PodProxy:
    """GET a path of one pod's port through the API server."""

    def __init__(self, client: Client, namespace: str, pod: str, port: int):
        self.client, self.namespace, self.pod, self.port = client, namespace, pod, port

    def path(self, path: str) -> str:
        ns, pod = (urllib.parse.quote(x, safe="") for x in (self.namespace, self.pod))
        return f"/api/v1/namespaces/{ns}/pods/{pod}:{self.port}/proxy{path}"

    def __call__(self, path: str) -> Any:
        where = f"pod {self.namespace}/{self.pod} port {self.port} via {self.client.cluster.server}"
        return _get(self.client, self.path(path), where, f"GET {path}", "`get` on `pods/proxy`", self.namespace)


def targets(*, kubeconfig_path: Path | None, context: str | None, namespace: str | None,
            node: str | None, port: int = INSPECT_PORT) -> list[Target]:
    """One Target per running trellis-node pod (only the one on `node`, if given)."""
    try:
        cluster = kubeconfig.load(kubeconfig_path, context)
    except (kubeconfig.KubeconfigError, OSError) as exc:
        raise InspectError(f"kubeconfig: {exc}") from None
    ns = namespace or NAMESPACE
    client = Client(cluster, timeout=10.0)
    params = {"labelSelector": NODE_SELECTOR}
    if node:
        params["fieldSelector"] = f"spec.nodeName={node}"
    list_path = f"/api/v1/namespaces/{urllib.parse.quote(ns, safe='')}/pods?{urllib.parse.urlencode(params)}"
    doc = _get(client, list_path, cluster.server, "finding the trellis-node pods", "`list` on `pods`", ns)
    pods = doc.get("items") or []
    where = f"on node {node!r} " if node else ""
    if not pods:
        raise InspectError(f"no trellis-node pod ({NODE_SELECTOR}) {where}in namespace {ns}; "
                           f"is trellis installed there (`trellis install`), or is it another namespace (-n)?")
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        states = ", ".join(f"{p['metadata']['name']} {(p.get('status') or {}).get('phase', 'Unknown')}" for p in pods)
        raise InspectError(f"no running trellis-node pod {where}in namespace {ns} ({states})")
    out = []
    for p in sorted(running, key=lambda p: ((p.get("spec") or {}).get("nodeName", ""), p["metadata"]["name"])):
        node_name = (p.get("spec") or {}).get("nodeName") or p["metadata"]["name"]
        out.append(Target(f"ztunnel/{node_name}", f"pod {ns}/{p['metadata']['name']}", port,
                          proxy=PodProxy(client, ns, p["metadata"]["name"], port)))
    return out
