"""The objects `trellis waypoint apply/delete` write (pure: dicts in, dicts out).

A waypoint is a Gateway API `Gateway` of class `trellis-waypoint` with its one HBONE
listener (Istio's `istioctl waypoint generate` shape, with our class); a namespace uses it
when labelled `trellis.dev/use-waypoint: <name>` (Istio: `istio.io/use-waypoint`)."""
from __future__ import annotations

import copy
from typing import Any

from meshcore import ports
from meshcore.resources import WAYPOINT_LABEL
from meshcore.resources.gateway import REPLICAS_ANNOTATION, WAYPOINT_CLASS

GATEWAY_API = "gateway.networking.k8s.io/v1"


def gateway(namespace: str, name: str, replicas: int | None = None,
            existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The waypoint's Gateway. `existing`: the Gateway already in the config, whose
    labels and annotations are kept (so `apply` without --replicas does not scale it)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    old = (existing or {}).get("metadata") or {}
    if old.get("labels"):
        meta["labels"] = dict(old["labels"])
    annotations = dict(old.get("annotations") or {})
    if replicas is not None:
        annotations[REPLICAS_ANNOTATION] = str(replicas)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": meta,
            "spec": {"gatewayClassName": WAYPOINT_CLASS,
                     "listeners": [{"name": "mesh", "port": ports.HBONE, "protocol": "HBONE"}]}}


def enroll(namespace: str, waypoint: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    """The Namespace with `trellis.dev/use-waypoint: <waypoint>` (created when the config
    has no Namespace object for it; every other field of an existing one is kept)."""
    doc = copy.deepcopy(existing) if existing else {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": namespace}}
    meta = doc.setdefault("metadata", {})
    meta["labels"] = dict(meta.get("labels") or {}, **{WAYPOINT_LABEL: waypoint})
    return doc


def unenroll(waypoint: str, existing: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Namespace without the label when it names `waypoint`; None when nothing changes
    (another waypoint, `none`, or no label: someone else's choice, left alone)."""
    labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(WAYPOINT_LABEL) != waypoint:
        return None
    doc = copy.deepcopy(existing)
    doc["metadata"]["labels"] = {k: v for k, v in labels.items() if k != WAYPOINT_LABEL}
    if not doc["metadata"]["labels"]:
        del doc["metadata"]["labels"]
    return doc


def replicas_of(gw: dict[str, Any]) -> int:
    raw = ((gw.get("metadata") or {}).get("annotations") or {}).get(REPLICAS_ANNOTATION, "1")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0
