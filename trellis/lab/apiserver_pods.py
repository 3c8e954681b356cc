"""The API-server stand-in's pod list in one namespace and the pods/proxy subresource
(see apiserver.py), with the selector and Status helpers it shares."""
from __future__ import annotations

import urllib.parse

import h11
import trio

from controlplane.sources.kubernetes import COLLECTIONS as SOURCE_COLLECTIONS
from meshcore import admin

# the collections are Kubernetes' own API paths, the same the source reads, plus the
# Deployments the control plane writes for waypoints (controlplane/waypoints.py), the
# ReplicaSets the lab's Deployment controller makes for them (trellis/lab/kubelet.py) and
# the ConfigMaps the control plane publishes the mesh root in (controlplane/rootcert.py)
COLLECTIONS = {**SOURCE_COLLECTIONS, "/apis/apps/v1/deployments": ("apps/v1", "Deployment"),
               "/apis/apps/v1/replicasets": ("apps/v1", "ReplicaSet"), "/api/v1/configmaps": ("v1", "ConfigMap")}
FIELDS = {"spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName"),
          "metadata.name": lambda o: (o.get("metadata") or {}).get("name"),
          "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace")}
PATH_OF = {kind: path for path, (_, kind) in COLLECTIONS.items()}


class PodsSubresources:
    """Mixed into ApiServerStandIn: uses its objects, rv, forbidden, pod_network, _send_json."""

    async def _pods(self, conn, stream, parts, params):
        """The namespaced pod list, or pods/proxy to one pod's NAME:PORT."""
        ns, proxy = parts[3], len(parts) > 6 and parts[6] == "proxy"
        name, _, port = parts[5].rpartition(":") if proxy else ("", "", "")
        verb, resource = ("get", "pods/proxy") if proxy else ("list", "pods")
        if resource in self.forbidden:
            what = f'pods "{name}"' if proxy else "pods"
            await self._send_json(conn, stream, 403, _status(403, "Forbidden", (
                f'{what} is forbidden: User "me" cannot {verb} resource "{resource}" in API group "" '
                f'in the namespace "{ns}"')))
            return
        pods = self.objects.get(PATH_OF["Pod"], {})
        if not proxy:
            items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")}
                     for (o_ns, _), o in sorted(pods.items()) if o_ns == ns and _selected(o, params)]
            await self._send_json(conn, stream, 200, {"kind": "PodList", "apiVersion": "v1",
                                                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})
            return
        pod = pods.get((ns, name or parts[5]))
        if pod is None or not port.isdigit():
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f'pods "{parts[5]}" not found'))
            return
        ip = (pod.get("status") or {}).get("podIP", "")
        host, hport = self.pod_network.get((ip, int(port)), (ip, int(port)))
        query = urllib.parse.urlencode(params)
        target = "/" + "/".join(parts[7:]) + (f"?{query}" if query else "")
        try:
            status, data = await trio.to_thread.run_sync(lambda: admin.http_get(host, hport, target, timeout=5.0))
        except OSError as exc:
            await self._send_json(conn, stream, 503, _status(503, "ServiceUnavailable", (
                f"error trying to reach service: dial tcp {ip}:{port}: connect: {exc.strerror or exc}")))
            return
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])))
        await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))


def _selected(obj: dict, params: dict) -> bool:
    """fieldSelector of equality terms on the fields clients here use (`spec.nodeName`,
    `metadata.name`, `metadata.namespace`); labelSelector of equality terms `k=v,k2=v2`."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, params.get("labelSelector", "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    for term in filter(None, params.get("fieldSelector", "").split(",")):
        field_path, _, value = term.partition("=")
        assert field_path in FIELDS, f"the stand-in knows no field selector {term!r}"
        if FIELDS[field_path](obj) != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}

