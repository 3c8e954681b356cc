"""Gateway API status in a cluster: the control plane writes what controlplane/status.py
computes through each object's status subresource.

After every snapshot the Kubernetes source publishes (a waypoint replica that starts is one:
its Pod becomes a workload), a second after a lost race, and every `resync` seconds (someone
else's edit of a status), it lists GatewayClasses,
Gateways, HTTPRoutes and GRPCRoutes as served (with their status and generation), computes
each one's status from the snapshot (creating the GatewayClass trellis-waypoint if there is
none, as istiod creates istio-waypoint) and sends a JSON merge patch to `.../NAME/status` for
those whose status differs, carrying the metadata.resourceVersion it read: a write made in
between (another controller's parents entry, another replica) is a 409, and the object is
read again next round instead of being overwritten.

No leader: every control plane replica computes the same status from the same objects, and
keeps the served lastTransitionTime of each condition whose status holds, so once one
replica has written, the others find nothing left to write."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

import trio

from meshcore.resources.gateway import WAYPOINT_CLASS
from meshcore.resources.grants import CONTROLLER_NAME

from .status import new_status, problems_by_object

log = logging.getLogger("trellis.controlplane.statuswriter")

GROUP = "/apis/gateway.networking.k8s.io/v1"
# plural -> kind; GatewayClass is cluster-scoped
KINDS = {"gatewayclasses": "GatewayClass", "gateways": "Gateway", "httproutes": "HTTPRoute", "grpcroutes": "GRPCRoute"}
API_VERSION = "gateway.networking.k8s.io/v1"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_path(plural: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    if plural == "gatewayclasses":
        return f"{GROUP}/gatewayclasses/{meta['name']}/status"
    return f"{GROUP}/namespaces/{meta['namespace']}/{plural}/{meta['name']}/status"


class StatusWriter:
    def __init__(self, api, store, *, clock: Callable[[], str] = utc_now, resync: float = 30.0,
                 retry: float = 1.0) -> None:
        self.api, self.store, self.clock, self.resync, self.retry = api, store, clock, resync, retry
        self.stats = {"rounds": 0, "written": 0, "conflicts": 0, "errors": 0}

    async def reconcile(self) -> int:
        """One round: the number of status writes made."""
        from kubewatch.client import KubeApiError
        snap = self.store.current()
        problems = problems_by_object(snap.errors)
        written = 0
        for plural, kind in KINDS.items():
            items, _ = await self.api.list(f"{GROUP}/{plural}")
            if plural == "gatewayclasses" and not any(i["metadata"]["name"] == WAYPOINT_CLASS for i in items):
                items.append(await self._create_class())
            for item in items:
                obj = {"apiVersion": API_VERSION, "kind": kind, **item}
                status = new_status(obj, snap.resources, problems, self.clock())
                if status is None or status == obj.get("status"):
                    continue
                meta = obj["metadata"]
                patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": status}
                try:
                    await self.api.patch(status_path(plural, obj), patch)
                except KubeApiError as exc:
                    if exc.code not in (404, 409):
                        raise
                    # gone, or written in between: what is served now is read next round
                    self.stats["conflicts"] += 1
                    continue
                written += 1
                log.info("event=status_written kind=%s object=%s/%s", kind, meta.get("namespace", ""), meta["name"])
        self.stats["rounds"] += 1
        self.stats["written"] += written
        return written

    async def _create_class(self) -> dict:
        """The GatewayClass trellis-waypoint, as istiod creates istio-waypoint: Gateways of the
        class work without it, but `kubectl get gatewayclass` should show who implements it."""
        from kubewatch.client import KubeApiError
        body = {"apiVersion": API_VERSION, "kind": "GatewayClass", "metadata": {"name": WAYPOINT_CLASS},
                "spec": {"controllerName": CONTROLLER_NAME,
                         "description": "Trellis waypoints: per-namespace L7 proxies for GAMMA routes"}}
        try:
            out = await self.api.post(f"{GROUP}/gatewayclasses", body)
        except KubeApiError as exc:
            if exc.code != 409:   # another replica made it first
                raise
            out = await self.api.get(f"{GROUP}/gatewayclasses/{WAYPOINT_CLASS}") or body
        log.info("event=gatewayclass_created name=%s", WAYPOINT_CLASS)
        return out

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from httpx2 import HTTPError

        from kubewatch.client import KubeApiError, describe
        task_status.started()
        seen, conflicts = -1, 0
        while True:
            if self.stats["conflicts"] > conflicts:   # lost a race: read again soon, not at the next change
                conflicts = self.stats["conflicts"]
                await trio.sleep(self.retry)
            else:
                with trio.move_on_after(self.resync):
                    seen = (await self.store.wait_for_change(seen)).version
            try:
                await self.reconcile()
            except (KubeApiError, HTTPError, OSError) as exc:
                self.stats["errors"] += 1
                log.warning("event=status_write_failed error=%s", describe(exc))
                await trio.sleep(self.retry)
