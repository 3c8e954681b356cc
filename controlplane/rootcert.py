"""The mesh root in every namespace: a ConfigMap `trellis-ca-root-cert` (key `root-cert.pem`),
as Istio publishes `istio-ca-root-cert`, so that a pod without a certificate yet (a
waypoint replica) can verify the control plane it asks for its first one.

The control plane (`--source kubernetes`) keeps one in each namespace the source lists
(except Kubernetes' own: kube-system, kube-public, kube-node-lease): it creates it in a
new namespace, and puts it back when someone edits or deletes it. It watches those
ConfigMaps only (`fieldSelector=metadata.name=trellis-ca-root-cert`, as Istio's
namespace controller does), and the namespaces come from the source's snapshots.
`plan` is the pure decision; `RootCertPublisher.run` reflects the ConfigMaps and writes
the difference after each change of either."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping

import trio

from .waypoints import MANAGED_BY, MANAGER, ROOT_CONFIGMAP, ROOT_KEY

log = logging.getLogger("trellis.controlplane.rootcert")

NAME, KEY = ROOT_CONFIGMAP, ROOT_KEY   # the waypoint Deployment mounts it (waypoints.py)
CONFIGMAPS = "/api/v1/configmaps"
SKIP = frozenset({"kube-system", "kube-public", "kube-node-lease"})


def desired(namespace: str, root_pem: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
            "data": {KEY: root_pem}}


def plan(namespaces: list[str], have: Mapping[str, dict], root_pem: str) -> tuple[list[dict], list[dict]]:
    """(creates, updates): a ConfigMap for each namespace without one; the served one with
    our data and label put back where someone changed them (its resourceVersion kept, so
    a write that crosses another fails with 409 and is planned again)."""
    creates, updates = [], []
    for ns in sorted(set(namespaces) - SKIP):
        cm = have.get(ns)
        if cm is None:
            creates.append(desired(ns, root_pem))
        elif cm.get("data") != {KEY: root_pem} or (cm.get("metadata") or {}).get("labels", {}).get(MANAGED_BY) != MANAGER:
            meta = dict(cm.get("metadata") or {})
            meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY: MANAGER}
            updates.append({**desired(ns, root_pem), "metadata": meta})   # a PUT replaces: other keys go
    return creates, updates


class RootCertPublisher:
    def __init__(self, api, store, root_pem: str, *, retry: float = 1.0) -> None:
        self.api, self.store, self.root_pem, self.retry = api, store, root_pem, retry
        self.have: dict[str, dict] = {}       # namespace -> our ConfigMap as served
        self.synced = False
        self.stats: Counter = Counter()
        self._dirty = trio.Event()

    # the reflector's callbacks
    def _replace(self, items: list[dict]) -> None:
        self.have = {(o.get("metadata") or {}).get("namespace", ""): o for o in items}
        self.synced = True
        self._dirty.set()

    def _apply(self, kind: str, obj: dict) -> None:
        ns = (obj.get("metadata") or {}).get("namespace", "")
        if kind == "DELETED":
            self.have.pop(ns, None)
        else:
            self.have[ns] = obj
        self._dirty.set()

    def namespaces(self) -> list[str]:
        return [r.name for r in self.store.current().resources.values() if r.kind == "Namespace"]

    async def reconcile(self) -> None:
        creates, updates = plan(self.namespaces(), self.have, self.root_pem)
        for obj in creates:
            ns = obj["metadata"]["namespace"]
            self.have[ns] = await self.api.post(f"/api/v1/namespaces/{ns}/configmaps", obj)
            self.stats["created"] += 1
            log.info("event=root_cert_created namespace=%s", ns)
        for obj in updates:
            ns = obj["metadata"]["namespace"]
            self.have[ns] = await self.api.put(f"/api/v1/namespaces/{ns}/configmaps/{NAME}", obj)
            self.stats["updated"] += 1
            log.info("event=root_cert_restored namespace=%s", ns)

    async def _on_snapshots(self) -> None:
        seen = -1
        while True:
            seen = (await self.store.wait_for_change(seen)).version
            self._dirty.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from httpx2 import HTTPError
        from kubewatch.client import KubeApiError, describe
        from kubewatch.reflector import Backoff, reflect
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: reflect(self.api, CONFIGMAPS, replace=self._replace, apply=self._apply,
                                               backoff=Backoff(), stats=self.stats,
                                               params={"fieldSelector": f"metadata.name={NAME}"}))
            nursery.start_soon(self._on_snapshots)
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                if not self.synced:
                    continue
                try:
                    await self.reconcile()
                except (KubeApiError, HTTPError, OSError) as exc:
                    # 409 (it changed meanwhile), 403 (a namespace being deleted), an outage: again soon
                    self.stats["errors"] += 1
                    log.warning("event=root_cert_failed error=%s", describe(exc))
                    await trio.sleep(self.retry)
                    self._dirty.set()
