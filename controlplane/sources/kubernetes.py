"""The Kubernetes source: list+watch of every collection the mesh reads, into the store.

One reflector per collection (kubewatch.reflector: client-go's list/watch semantics,
bookmarks, relist on 410, back-off with jitter).
Objects go through the same validation as the directory source (meshcore.resources) and
the same cross-object rules (`settle`); an invalid edit keeps the object's last good
version and reports the error. Nothing is published until every collection has been
listed once: a partial first snapshot would tell nodes that workloads are gone."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import trio

from meshcore.resources import Resource, ResourceError, ResourceInvalid, from_dict

from ..store import VersionedStore
from . import settle
from kubewatch.client import KubeApi
from kubewatch.reflector import Backoff, reflect

log = logging.getLogger("trellis.controlplane.sources.kubernetes")

# collection path -> (apiVersion, kind). Namespaced collections are listed cluster-wide.
COLLECTIONS = {
    "/api/v1/namespaces": ("v1", "Namespace"),
    "/api/v1/services": ("v1", "Service"),
    "/api/v1/pods": ("v1", "Pod"),
    "/api/v1/serviceaccounts": ("v1", "ServiceAccount"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "/apis/gateway.networking.k8s.io/v1/gateways": ("gateway.networking.k8s.io/v1", "Gateway"),
    "/apis/gateway.networking.k8s.io/v1/httproutes": ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    "/apis/gateway.networking.k8s.io/v1/grpcroutes": ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses": ("gateway.networking.k8s.io/v1", "GatewayClass"),
    # v1beta1: served by every Gateway API release with ReferenceGrant (v1 only from 1.5)
    "/apis/gateway.networking.k8s.io/v1beta1/referencegrants": ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    "/apis/trellis.dev/v1alpha1/workloadentries": ("trellis.dev/v1alpha1", "WorkloadEntry"),
    "/apis/trellis.dev/v1alpha1/authorizationpolicies": ("trellis.dev/v1alpha1", "AuthorizationPolicy"),
    "/apis/trellis.dev/v1alpha1/peerauthentications": ("trellis.dev/v1alpha1", "PeerAuthentication"),
    "/apis/trellis.dev/v1alpha1/trafficpolicies": ("trellis.dev/v1alpha1", "TrafficPolicy"),
    "/apis/trellis.dev/v1alpha1/ratelimitpolicies": ("trellis.dev/v1alpha1", "RateLimitPolicy"),
}
KEEP_METADATA = ("name", "namespace", "labels", "annotations")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SOURCE = "kubernetes"


@dataclass
class Cached:
    resource_version: str
    resource: Resource | None       # the last good version (None if it never validated)
    errors: tuple[ResourceError, ...] = ()


def normalise(obj: dict, api_version: str, kind: str) -> dict:
    """What the mesh reads of a served object: no server-set metadata (resourceVersion,
    uid, managedFields...) and no status, except a Pod's address and phase. A status
    update or a resync then changes nothing, and a served object equals the same object
    written in a config directory."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in KEEP_METADATA}
    if isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
        if not meta["annotations"]:
            del meta["annotations"]
    out = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    out.update((k, v) for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status"))
    if kind == "Pod" and isinstance(obj.get("status"), dict):
        out["status"] = {k: v for k, v in obj["status"].items() if k in ("podIP", "phase")}
    return out


class KubernetesSource:
    def __init__(self, api: KubeApi, store: VersionedStore, *, watch_timeout: int = 300, batch: float = 0.1,
                 backoff: Callable[[], Backoff] = Backoff, collections: dict = COLLECTIONS):
        self.api, self.store = api, store
        self.watch_timeout, self.batch = watch_timeout, batch
        self.collections = collections
        self.objects: dict[str, dict[tuple, Cached]] = {path: {} for path in collections}
        self.backoffs = {path: backoff() for path in collections}
        self.stats: Counter = Counter()
        self._synced: set[str] = set()
        self._all_synced = trio.Event()
        self._dirty = trio.Event()

    def describe(self) -> str:
        return f"kubernetes {self.api.server}"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for path in self.collections:
                nursery.start_soon(self._reflect, path)
            await self._all_synced.wait()
            self._publish()
            log.info("event=kubernetes_synced server=%s version=%d", self.api.server, self.store.version)
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await trio.sleep(self.batch)  # one version for a burst of events (a rollout)
                self._publish()

    # -- one collection ---------------------------------------------------------------------
    async def _reflect(self, path: str) -> None:
        await reflect(self.api, path, replace=lambda items: self._replace(path, items),
                      apply=lambda kind, obj: self._apply(path, kind, obj), backoff=self.backoffs[path],
                      stats=self.stats, watch_timeout=self.watch_timeout)

    def _replace(self, path: str, items: list) -> None:
        old, new = self.objects[path], {}
        for obj in items:
            key, rv = _key(obj), _rv(obj)
            prev = old.get(key)
            new[key] = prev if prev is not None and prev.resource_version == rv else self._validate(path, obj, prev)
        if new.keys() != old.keys() or any(new[k] is not old[k] for k in new):
            self.objects[path] = new
            self._changed()
        if path not in self._synced:
            self._synced.add(path)
            if len(self._synced) == len(self.collections):
                self._all_synced.set()

    def _apply(self, path: str, kind: str, obj: dict) -> None:
        self.stats["events"] += 1
        cache, key = self.objects[path], _key(obj)
        if kind == "DELETED":
            if cache.pop(key, None) is not None:
                self._changed()
            return
        prev = cache.get(key)
        if prev is not None and prev.resource_version == _rv(obj):
            self.stats["duplicates"] += 1  # the same version again: already applied
            return
        cache[key] = self._validate(path, obj, prev)
        self._changed()

    def _validate(self, path: str, obj: dict, prev: Cached | None) -> Cached:
        api_version, kind = self.collections[path]
        try:
            return Cached(_rv(obj), from_dict(normalise(obj, api_version, kind), SOURCE))
        except ResourceInvalid as exc:
            # as the directory source keeps a file's last good objects, keep this one's
            return Cached(_rv(obj), prev.resource if prev else None, tuple(exc.errors))

    def _changed(self) -> None:
        self.stats["applied"] += 1
        self._dirty.set()

    def _publish(self) -> bool:
        resources, errors = [], []
        for cache in self.objects.values():
            for c in cache.values():
                if c.resource is not None:
                    resources.append(c.resource)
                errors += c.errors
        resources, errors = settle(resources, errors)
        return self.store.publish(resources, errors, self.describe())

    def dump(self) -> dict:
        return {"server": self.api.server, "stats": dict(self.stats),
                "backoff": {p: [round(d, 3) for d in b.delays] for p, b in self.backoffs.items() if b.delays}}


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
