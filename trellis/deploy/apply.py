"""Server-side apply and delete of rendered objects, one HTTP request per object.

Apply is `PATCH <object URL>?fieldManager=trellis&force=true` with
`Content-Type: application/apply-patch+yaml` (Kubernetes API conventions, "Server-Side
Apply"): the API server creates or merges, and owns the merge; `force` takes over fields
another manager set, as `kubectl apply --server-side --force-conflicts` does. No discovery
requests: the REST path of every kind the chart makes is known here, and our CRDs say
their own plural."""
from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass

import yaml

from .kubeconfig import Cluster

FIELD_MANAGER = "trellis"
APPLY_TYPE = "application/apply-patch+yaml"
# kind -> (API prefix, plural, namespaced)
REST = {
    "Namespace": ("api/v1", "namespaces", False),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "Service": ("api/v1", "services", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Secret": ("api/v1", "secrets", True),
    "Deployment": ("apis/apps/v1", "deployments", True),
    "DaemonSet": ("apis/apps/v1", "daemonsets", True),
    "PodDisruptionBudget": ("apis/policy/v1", "poddisruptionbudgets", True),
    "ClusterRole": ("apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}


class ApplyError(Exception):
    """The API server refused an object; the message names it and says why."""


@dataclass(frozen=True)
class Result:
    kind: str
    name: str
    namespace: str | None
    action: str          # "applied", "deleted", "absent"


def object_path(obj: dict, rest: dict = REST) -> str:
    kind, meta = obj.get("kind"), obj.get("metadata") or {}
    if kind not in rest:
        raise ApplyError(f"{kind} {meta.get('name')}: no REST mapping for kind {kind!r} "
                         f"(known: {', '.join(sorted(rest))})")
    prefix, plural, namespaced = rest[kind]
    name = urllib.parse.quote(meta["name"], safe="")
    if namespaced:
        return f"/{prefix}/namespaces/{urllib.parse.quote(meta['namespace'], safe='')}/{plural}/{name}"
    return f"/{prefix}/{plural}/{name}"


def rest_with_crds(objs: list[dict]) -> dict:
    """REST plus the kinds that CRDs among `objs` define."""
    rest = dict(REST)
    for o in objs:
        if o.get("kind") == "CustomResourceDefinition":
            s = o["spec"]
            for v in s["versions"]:
                if v.get("served"):
                    rest[s["names"]["kind"]] = (f"apis/{s['group']}/{v['name']}", s["names"]["plural"],
                                                s["scope"] == "Namespaced")
    return rest


def _describe(obj: dict) -> str:
    m = obj.get("metadata") or {}
    return f"{obj.get('kind')} {m['namespace']}/{m['name']}" if m.get("namespace") else f"{obj.get('kind')} {m.get('name')}"


class Client:
    """A minimal API client: one connection, reused; errors carry the server's Status message."""

    def __init__(self, cluster: Cluster, timeout: float = 30.0):
        self.cluster = cluster
        u = urllib.parse.urlsplit(cluster.server)
        self._conn = (http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout,
                                                  context=cluster.ssl_context)
                      if u.scheme == "https" else http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout))
        self._base = u.path.rstrip("/")

    def close(self) -> None:
        self._conn.close()

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {"Accept": "application/json", "User-Agent": "trellis-install"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.cluster.token:
            headers["Authorization"] = f"Bearer {self.cluster.token}"
        try:
            self._conn.request(method, self._base + path, body=body, headers=headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise ApplyError(f"{method} {self.cluster.server}{path}: {exc}") from exc
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {"message": data[:200].decode(errors="replace")}
        return resp.status, doc

    def apply(self, obj: dict, rest: dict = REST) -> Result:
        path = object_path(obj, rest) + "?" + urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
        status, doc = self.request("PATCH", path, yaml.safe_dump(obj, sort_keys=False).encode(), APPLY_TYPE)
        if status >= 300:
            raise ApplyError(f"{_describe(obj)}: apply refused ({status} {doc.get('reason', '')}): "
                             f"{doc.get('message', doc)}")
        m = obj["metadata"]
        return Result(obj["kind"], m["name"], m.get("namespace"), "applied")

    def delete(self, obj: dict, rest: dict = REST) -> Result:
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}).encode()
        status, doc = self.request("DELETE", object_path(obj, rest), body, "application/json")
        m = obj["metadata"]
        if status == 404:
            return Result(obj["kind"], m["name"], m.get("namespace"), "absent")
        if status >= 300:
            raise ApplyError(f"{_describe(obj)}: delete refused ({status} {doc.get('reason', '')}): "
                             f"{doc.get('message', doc)}")
        return Result(obj["kind"], m["name"], m.get("namespace"), "deleted")


def apply_all(client: Client, objs: list[dict]) -> list[Result]:
    rest = rest_with_crds(objs)
    return [client.apply(o, rest) for o in objs]


def delete_all(client: Client, objs: list[dict]) -> list[Result]:
    """Delete in reverse install order (workloads before the RBAC and accounts they use)."""
    rest = rest_with_crds(objs)
    return [client.delete(o, rest) for o in reversed(objs)]
