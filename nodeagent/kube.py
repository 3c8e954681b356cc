"""The node agent in a cluster: which pods run on this node, from the API server, and
where each one's cgroup and network namespace are.

The control plane's view says which workloads belong in the mesh (namespace labels,
opt-outs, PeerAuthentication); a Pod becomes a WorkloadEntry there, with no network
namespace, since only this node can find it. So the agent also lists and watches its
own node's pods (`fieldSelector=spec.nodeName=<node>`, the kubelet's own query, so one
node's agent never holds the cluster's pods), finds each pod's cgroup from its UID under
the kubelet's layouts (podcgroups.py) and its namespace from a process there, and fills
in the WorkloadEntry's networkNamespace before the pure reconcile sees it. A pod the API
does not list, or whose cgroup has no process yet, stays unenrolled until it has one."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import trio

from meshcore.resources import Resource, ResourceInvalid, from_dict
from kubewatch.client import KubeApi
from kubewatch.reflector import Backoff, reflect

from . import podcgroups

log = logging.getLogger("trellis.nodeagent.kube")

PODS = "/api/v1/pods"
REFRESH = 2.0  # how often a pod whose cgroup had no process yet is looked at again


@dataclass(frozen=True)
class KubePod:
    namespace: str
    name: str
    uid: str        # metadata.uid: the kubelet names the pod's cgroup after it


def kube_pod(obj: dict) -> KubePod | None:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if not meta.get("uid") or not meta.get("name") or spec.get("hostNetwork"):
        return None  # a host-network pod shares the node's namespace: never enrolled
    return KubePod(meta.get("namespace") or "", meta["name"], str(meta["uid"]))


class NodePods:
    def __init__(self, api: KubeApi, node: str, cgroup_root: Path, *, watch_timeout: int = 300,
                 backoff: Callable[[], Backoff] = Backoff):
        self.api, self.node, self.cgroup_root = api, node, Path(cgroup_root)
        self.watch_timeout, self.backoff = watch_timeout, backoff()
        self.pods: dict[tuple[str, str], KubePod] = {}
        self.stats: Counter = Counter()
        self._netns: dict[str, str] = {}   # uid -> the /proc/<pid>/ns/net path handed out
        self._synced = trio.Event()
        self._changed = trio.Event()
        self._resources: Mapping[Any, Resource] = {}
        self._version: int | None = None

    # -- the API side -----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: reflect(
                self.api, PODS, replace=self._replace, apply=self._apply, backoff=self.backoff, stats=self.stats,
                watch_timeout=self.watch_timeout, params={"fieldSelector": f"spec.nodeName={self.node}"}))
            await self._synced.wait()
            log.info("event=node_pods_synced node=%s pods=%d", self.node, len(self.pods))
            task_status.started()

    def _replace(self, items: list) -> None:
        self.pods = {(p.namespace, p.name): p for p in map(kube_pod, items) if p is not None}
        self._synced.set()
        self._changed.set()

    def _apply(self, kind: str, obj: dict) -> None:
        pod = kube_pod(obj)
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if kind == "DELETED" or pod is None:
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod
        self._changed.set()

    # -- where a pod is ---------------------------------------------------------------
    def cgroup_of(self, namespace: str, name: str) -> Path | None:
        pod = self.pods.get((namespace, name))
        return podcgroups.pod_cgroup(self.cgroup_root, pod.uid) if pod else None

    def netns_of(self, pod: KubePod) -> str | None:
        """The same path for as long as its process lives, so the reconcile does not see
        a changed pod (and re-enroll it) at every look."""
        known = self._netns.get(pod.uid)
        if known is not None and Path(known).exists():
            return known
        cgroup = podcgroups.pod_cgroup(self.cgroup_root, pod.uid)
        found = podcgroups.pod_netns(cgroup) if cgroup else None
        if found is None:
            self._netns.pop(pod.uid, None)
        else:
            self._netns[pod.uid] = found
        return found

    def overlay(self, resources: Mapping[Any, Resource]) -> dict:
        """The control plane's view with this node's pods' network namespaces filled in."""
        out = dict(resources)
        live = set()
        for key, r in resources.items():
            if r.kind != "WorkloadEntry" or r.spec.node != self.node or r.spec.network_namespace:
                continue
            pod = self.pods.get((r.namespace or "", r.name))
            netns = self.netns_of(pod) if pod else None
            if netns is None:
                continue
            live.add(pod.uid)
            raw = r.raw
            try:
                out[key] = from_dict({**raw, "spec": {**raw["spec"], "networkNamespace": netns}}, r.source)
            except ResourceInvalid as exc:  # cannot happen for a valid entry; never stop the agent
                log.warning("event=overlay_failed workload=%s/%s error=%r", r.namespace, r.name, str(exc))
        for uid in set(self._netns) - live:
            del self._netns[uid]
        return out

    # -- feeding the agent ------------------------------------------------------------
    def on_update(self, resources: Mapping[Any, Resource], version: int | None = None) -> None:
        """The control plane's watch calls this instead of the agent's on_update."""
        self._resources, self._version = resources, version
        self._changed.set()

    async def feed(self, on_update: Callable[[dict, int | None], None]) -> None:
        """Hand the agent the overlaid view whenever the control plane's view, the node's
        pods or a pod's namespace changed (looked at every REFRESH seconds)."""
        sent = None
        while True:
            self._changed = trio.Event()
            view = self.overlay(self._resources)
            signature = (self._version, id(self._resources),
                         tuple(sorted((k, r.spec.network_namespace) for k, r in view.items() if r.kind == "WorkloadEntry")))
            if signature != sent:
                on_update(view, self._version)
                sent = signature
            with trio.move_on_after(REFRESH):
                await self._changed.wait()

    def dump(self) -> dict:
        return {"node": self.node, "cgroupRoot": str(self.cgroup_root), "stats": dict(self.stats),
                "pods": {f"{ns}/{name}": {"uid": p.uid, "netns": self._netns.get(p.uid)}
                         for (ns, name), p in sorted(self.pods.items())}}
