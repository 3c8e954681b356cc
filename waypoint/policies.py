"""Which TrafficPolicy and RateLimitPolicies apply to a request (pure): Gateway API policy
attachment (GEP-713). A policy's targetRefs name objects in the policy's own namespace.

- TrafficPolicy: one per Service. When several target the same Service the oldest
  (creationTimestamp) wins, then the first by namespace/name, as GEP-713 orders conflicts;
  the others are reported in `conflicts` so the admin view can say why they are ignored.
  No TrafficPolicy: the defaults, among them the retry budget (20%, 3/s).
- RateLimitPolicy: every policy that targets the Service or the route that matched applies,
  and a request must be admitted by each of them (the most specific cannot loosen another).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from meshcore.resources import Resource
from meshcore.resources.policies import RateLimitPolicySpec, TrafficPolicySpec

from .routing import FOREVER, RouteRef

DEFAULT_TRAFFIC_POLICY = TrafficPolicySpec(target_refs=())


def _age(r: Resource) -> tuple[str, str]:
    created = (r.raw.get("metadata") or {}).get("creationTimestamp") or FOREVER
    return str(created), f"{r.namespace}/{r.name}"


def _targets(r: Resource, kind: str, name: str) -> bool:
    return any(t.kind == kind and t.name == name for t in r.spec.target_refs)


@dataclass(frozen=True)
class TrafficChoice:
    spec: TrafficPolicySpec
    name: str | None = None                  # "ns/name" of the policy in force, None for defaults
    conflicts: tuple[str, ...] = ()          # policies that lost to it


def traffic_policy(resources: Iterable[Resource], namespace: str, service: str) -> TrafficChoice:
    found = sorted((r for r in resources if r.kind == "TrafficPolicy" and r.namespace == namespace
                    and _targets(r, "Service", service)), key=_age)
    if not found:
        return TrafficChoice(DEFAULT_TRAFFIC_POLICY)
    return TrafficChoice(found[0].spec, f"{found[0].namespace}/{found[0].name}",
                         tuple(f"{r.namespace}/{r.name}" for r in found[1:]))


def rate_limits(resources: Iterable[Resource], namespace: str, service: str,
                route: RouteRef | None = None) -> list[tuple[str, RateLimitPolicySpec]]:
    """(ns/name, spec) of every RateLimitPolicy for this Service or the route that matched."""
    out = []
    for r in sorted((r for r in resources if r.kind == "RateLimitPolicy"), key=_age):
        if r.namespace == namespace and _targets(r, "Service", service):
            out.append((f"{r.namespace}/{r.name}", r.spec))
        elif route is not None and r.namespace == route.namespace and _targets(r, route.kind, route.name):
            out.append((f"{r.namespace}/{r.name}", r.spec))
    return out
