"""Waypoints in a cluster: for each Gateway of class `trellis-waypoint` the control plane
creates and owns a Deployment, a ServiceAccount and a Service, as Istio's gateway
controller does, and removes them with the Gateway.

`desired` (a Gateway -> its three objects) and `plan` (Gateways + what exists -> creates,
updates, deletes) are pure; `WaypointReconciler` runs them each time the Kubernetes
source publishes a new snapshot and writes the difference with POST/PUT/DELETE.
Every object carries an ownerReference to its Gateway (controller, blockOwnerDeletion),
so Kubernetes' garbage collector removes them even when the control plane is down, and
the label `trellis.dev/managed-by: trellis-controlplane`: objects without it are never touched."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from meshcore import ports
from meshcore.resources import AMBIENT_LABEL, ResourceInvalid, from_dict
from meshcore.resources.gateway import WAYPOINT_CLASS, waypoint_replicas

from .sources.kubernetes import normalise

log = logging.getLogger("trellis.controlplane.waypoints")

MANAGED_BY = "trellis.dev/managed-by"
MANAGER = "trellis-controlplane"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
GATEWAYS = "/apis/gateway.networking.k8s.io/v1/gateways"
# kind -> (apiVersion, cluster-wide collection path, namespaced collection path pattern)
KINDS = {
    "ServiceAccount": ("v1", "/api/v1/serviceaccounts", "/api/v1/namespaces/{ns}/serviceaccounts"),
    "Service": ("v1", "/api/v1/services", "/api/v1/namespaces/{ns}/services"),
    "Deployment": ("apps/v1", "/apis/apps/v1/deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
}
# one projected volume: the pod's ServiceAccount token (audience: the CA's) and the mesh
# root from the namespace's ConfigMap (controlplane/rootcert.py), for the first certificate
TOKEN_DIR = "/var/run/secrets/trellis"
ROOT_CONFIGMAP, ROOT_KEY = "trellis-ca-root-cert", "root-cert.pem"


@dataclass(frozen=True)
class Settings:
    image: str = "trellis:latest"
    control_plane: str = f"trellis-controlplane.trellis-system.svc:{ports.CONTROL_PLANE}"
    trust_domain: str = "cluster.local"
    token_audience: str = "trellis-ca"
    token_seconds: int = 3600


def is_waypoint(gateway: dict) -> bool:
    return (gateway.get("spec") or {}).get("gatewayClassName") == WAYPOINT_CLASS


def desired(gateway: dict, settings: Settings) -> list[dict] | None:
    """The ServiceAccount, Service and Deployment of a waypoint Gateway (as served: with
    its uid), or None when the Gateway does not validate (its objects are then left as they are)."""
    meta = gateway["metadata"]
    name, ns = meta["name"], meta["namespace"]
    try:
        from_dict(normalise(gateway, "gateway.networking.k8s.io/v1", "Gateway"), "kubernetes")
    except ResourceInvalid as exc:
        log.warning("event=waypoint_invalid gateway=%s/%s errors=%r", ns, name, [str(e) for e in exc.errors])
        return None
    labels = {MANAGED_BY: MANAGER, GATEWAY_NAME: name}
    owner = {"apiVersion": gateway.get("apiVersion", "gateway.networking.k8s.io/v1"), "kind": "Gateway",
             "name": name, "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}

    def obj(kind: str, **body) -> dict:
        return {"apiVersion": KINDS[kind][0], "kind": kind, "metadata": {
            "name": name, "namespace": ns, "labels": dict(labels), "ownerReferences": [dict(owner)]}, **body}

    pod_labels = {GATEWAY_NAME: name, AMBIENT_LABEL: "none", MANAGED_BY: MANAGER}
    args = ["--namespace", ns, "--gateway", name, "--trust-domain", settings.trust_domain,
            "--service-account", name, "--control-plane", settings.control_plane,
            "--token-file", f"{TOKEN_DIR}/token", "--ca-root-file", f"{TOKEN_DIR}/{ROOT_KEY}",
            "--hbone-port", str(ports.HBONE), "--admin", f"127.0.0.1:{ports.ZTUNNEL_ADMIN}",
            "--metrics", f"0.0.0.0:{ports.METRICS}", "--ready", f"0.0.0.0:{ports.READY}"]
    container = {
        "name": "waypoint", "image": settings.image, "command": ["python3", "-m", "waypoint"], "args": args,
        "ports": [{"name": "mesh", "containerPort": ports.HBONE, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": ports.METRICS, "protocol": "TCP"},
                  {"name": "status-port", "containerPort": ports.READY, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": ports.READY}},
        "volumeMounts": [{"name": "trellis-token", "mountPath": TOKEN_DIR, "readOnly": True}]}
    token = {"name": "trellis-token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": settings.token_audience,
                                 "expirationSeconds": settings.token_seconds}},
        {"configMap": {"name": ROOT_CONFIGMAP, "items": [{"key": ROOT_KEY, "path": ROOT_KEY}]}}]}}
    return [
        obj("ServiceAccount"),
        obj("Service", spec={"selector": {GATEWAY_NAME: name},
                             "ports": [{"name": "mesh", "port": ports.HBONE, "targetPort": ports.HBONE,
                                        "protocol": "TCP"}]}),
        obj("Deployment", spec={
            "replicas": waypoint_replicas(meta.get("annotations") or {}),
            "selector": {"matchLabels": {GATEWAY_NAME: name}},
            "template": {"metadata": {"labels": pod_labels},
                         "spec": {"serviceAccountName": name, "containers": [container], "volumes": [token]}}}),
    ]


def plan(gateways: list[dict], existing: list[dict], settings: Settings
         ) -> tuple[list[dict], list[dict], list[dict]]:
    """(creates, updates, deletes). `existing`: the objects labelled as ours, of every kind.
    An update is the served object with our labels, owner and spec fields laid over it,
    so fields the server set (a Service's clusterIP, defaults) and resourceVersion stay."""
    have = {_ident(o): o for o in existing if _labels(o).get(MANAGED_BY) == MANAGER}
    want, keep = {}, set()
    for gw in gateways:
        if not is_waypoint(gw):
            continue
        objs = desired(gw, settings)
        if objs is None:  # a broken edit: keep what runs until it is fixed
            keep |= {i for i in have if i[1:] == (gw["metadata"]["namespace"], gw["metadata"]["name"])
                     and _owner_uid(have[i]) == gw["metadata"].get("uid")}
            continue
        want.update((_ident(o), o) for o in objs)
    creates = [o for i, o in want.items() if i not in have]
    updates = []
    for i, o in want.items():
        if i in have and not _contains(have[i], o):
            updates.append(_overlay(have[i], o))
    deletes = [o for i, o in have.items() if i not in want and i not in keep]
    return creates, updates, deletes


def _ident(o: dict) -> tuple[str, str, str]:
    m = o.get("metadata") or {}
    return o.get("kind", ""), m.get("namespace", ""), m.get("name", "")


def _labels(o: dict) -> dict:
    return (o.get("metadata") or {}).get("labels") or {}


def _owner_uid(o: dict) -> str | None:
    refs = (o.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("kind") == "Gateway"), None)


EXACT = ("selector", "matchLabels")   # maps where an extra key changes meaning: compared whole


def _contains(have, want, key: str = "") -> bool:
    """`want` is a part of `have` (the server adds defaults; only what we set is compared)."""
    if isinstance(want, dict):
        if key in EXACT and isinstance(have, dict) and have.keys() != want.keys():
            return False
        return isinstance(have, dict) and all(k in have and _contains(have[k], v, k) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_contains, have, want))
    return have == want


def _overlay(have: dict, want: dict) -> dict:
    """The served object with our metadata merged in (others' labels stay; our owner
    reference replaces) and each spec field we set replaced whole."""
    meta = {**have.get("metadata", {}), **want["metadata"],
            "labels": {**(have.get("metadata") or {}).get("labels", {}), **want["metadata"]["labels"]}}
    out = {**have, "metadata": meta}
    if "spec" in want:
        out["spec"] = {**(have.get("spec") or {}), **want["spec"]}
    return out


def _path(o: dict, named: bool = True) -> str:
    kind, ns, name = _ident(o)
    base = KINDS[kind][2].format(ns=ns)
    return f"{base}/{name}" if named else base


class WaypointReconciler:
    """Runs `plan` against the API server after every snapshot the Kubernetes source publishes
    (Gateways and our objects are read fresh then: the snapshot drops uids and Deployments)."""

    def __init__(self, api, store, settings: Settings = Settings(), *, retry: float = 1.0) -> None:
        self.api, self.store, self.settings, self.retry = api, store, settings, retry
        self.stats = {"reconciles": 0, "created": 0, "updated": 0, "deleted": 0, "errors": 0}

    async def reconcile(self) -> None:
        gateways, _ = await self.api.list(GATEWAYS)
        existing = []
        for kind, (api_version, path, _) in KINDS.items():
            items, _ = await self.api.list(path, {"labelSelector": f"{MANAGED_BY}={MANAGER}"})
            existing += [{"apiVersion": api_version, "kind": kind, **o} for o in items]
        creates, updates, deletes = plan(gateways, existing, self.settings)
        for verb, todo in (("created", creates), ("updated", updates), ("deleted", deletes)):
            for o in todo:
                if verb == "created":
                    await self.api.post(_path(o, named=False), o)
                elif verb == "updated":
                    await self.api.put(_path(o), o)
                else:
                    await self.api.delete(_path(o))
                self.stats[verb] += 1
                log.info("event=waypoint_%s kind=%s object=%s/%s", verb, *_ident(o))
        self.stats["reconciles"] += 1

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from kubewatch.client import KubeApiError, describe
        from httpx2 import HTTPError
        task_status.started()
        seen = -1
        while True:
            snap = await self.store.wait_for_change(seen)
            try:
                await self.reconcile()
                seen = snap.version
            except (KubeApiError, HTTPError, OSError) as exc:
                # a conflict (someone wrote in between) or an outage: read again and retry
                self.stats["errors"] += 1
                log.warning("event=waypoint_reconcile_failed error=%s", describe(exc))
                await trio.sleep(self.retry)
