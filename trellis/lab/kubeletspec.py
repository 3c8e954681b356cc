"""What the cluster-shaped lab does for a Deployment in place of Kubernetes' Deployment
controller, scheduler and kubelet (pure: objects in, objects and argv out; the actor is
trellis/lab/kubelet.py).

- `replicaset_for(deployment)`: the ReplicaSet the Deployment controller would make: named
  `<deployment>-<pod-template-hash>`, the template's labels plus `pod-template-hash`,
  controlled by the Deployment (ownerReference with its uid, controller, blockOwnerDeletion);
- `pod_for(replicaset, name, node, address)`: its pod as the kubelet reports it running
  (spec.nodeName, status.podIP, phase Running), controlled by the ReplicaSet;
- `token_request(pod, source)`: the TokenRequest the kubelet sends for a projected
  `serviceAccountToken` source (audience, expirationSeconds, bound to the pod by name and uid);
- `projected_files(volume, token, configmaps)`: the files of a projected volume (the token
  and configMap items), as the kubelet writes them;
- `container_argv(pod, mounts, python)`: the container's command line, with each volume's
  mountPath replaced by where the lab keeps its files (no mount namespaces in the lab) and
  the image's `python3` by this interpreter (the lab runs the image's code from this tree)."""
from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

HASH_LABEL = "pod-template-hash"


def template_hash(deployment: dict) -> str:
    """Stable for one pod template (Kubernetes hashes it too; the exact function is its own)."""
    tmpl = json.dumps((deployment.get("spec") or {}).get("template") or {}, sort_keys=True)
    return format(zlib.crc32(tmpl.encode()), "x")


def _owner(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def replicaset_for(deployment: dict) -> dict:
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    h = template_hash(deployment)
    tmpl = copy.deepcopy(spec.get("template") or {})
    tmpl.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
    selector = copy.deepcopy(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[HASH_LABEL] = h
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{meta['name']}-{h}", "namespace": meta["namespace"],
                         "labels": dict(tmpl["metadata"]["labels"]),
                         "ownerReferences": [_owner({"apiVersion": "apps/v1", "kind": "Deployment", **deployment})]},
            "spec": {"replicas": spec.get("replicas", 1), "selector": selector, "template": tmpl}}


def pod_for(replicaset: dict, name: str, node: str, address: str, uid: str | None = None) -> dict:
    tmpl = replicaset["spec"]["template"]
    meta = {"name": name, "namespace": replicaset["metadata"]["namespace"],
            "labels": dict((tmpl.get("metadata") or {}).get("labels") or {}),
            "ownerReferences": [_owner({"apiVersion": "apps/v1", "kind": "ReplicaSet", **replicaset})]}
    if uid:
        meta["uid"] = uid
    spec = copy.deepcopy(tmpl.get("spec") or {})
    spec["nodeName"] = node
    spec.setdefault("serviceAccountName", "default")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}}


def token_request(pod: dict, source: dict) -> dict:
    sat = source["serviceAccountToken"]
    spec = {"audiences": [sat["audience"]] if sat.get("audience") else [],
            "expirationSeconds": sat.get("expirationSeconds", 3600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                               "uid": pod["metadata"]["uid"]}}
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


class MissingSource(Exception):
    """A volume source the kubelet cannot fill yet (a ConfigMap not there): the pod waits."""


def projected_files(volume: dict, token: str | None, configmaps: dict[str, dict]) -> dict[str, str]:
    """path -> content of a projected volume (serviceAccountToken and configMap sources)."""
    files = {}
    for source in (volume.get("projected") or {}).get("sources") or []:
        if "serviceAccountToken" in source:
            files[source["serviceAccountToken"]["path"]] = token or ""
        elif "configMap" in source:
            ref = source["configMap"]
            cm = configmaps.get(ref["name"])
            if cm is None:
                if ref.get("optional"):
                    continue
                raise MissingSource(f'configmap "{ref["name"]}" not found')
            data = cm.get("data") or {}
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    raise MissingSource(f'configmap "{ref["name"]}" has no key {item["key"]}')
                files[item["path"]] = data[item["key"]]
    return files


def token_sources(pod: dict) -> list[dict]:
    return [s for v in (pod.get("spec") or {}).get("volumes") or []
            for s in (v.get("projected") or {}).get("sources") or [] if "serviceAccountToken" in s]


def container_argv(pod: dict, mounts: dict[str, Path], python: str) -> list[str]:
    """The first container's command + args; `mounts`: volume name -> its files in the lab."""
    (c, *_) = pod["spec"]["containers"]
    paths = {m["mountPath"].rstrip("/"): str(mounts[m["name"]]) for m in c.get("volumeMounts") or []}
    argv = [python if a in ("python3", "python") else a for a in [*(c.get("command") or []), *(c.get("args") or [])]]
    out = []
    for a in argv:
        for mount, local in paths.items():
            if a == mount or a.startswith(mount + "/"):
                a = local + a[len(mount):]
        out.append(a)
    return out
