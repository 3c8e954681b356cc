"""What each subscriber of the watch receives (pure).

A node: every Namespace, Service, WorkloadEntry, Gateway and HTTPRoute (any of them may be
a destination), and only the policies it enforces: those in namespaces with a workload on
that node, or in the mesh root namespace.

A waypoint (a Gateway of class trellis-waypoint): what it routes and enforces for its own
namespace: the Namespace, its Gateway, the namespace's Services and routes, the Services
those routes send to (in any namespace), the workloads behind all of those Services (the
endpoints it picks from), and the policies of its namespace and of the root namespace."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from meshcore.identity import SpiffeId, node_from_identity, workload_identity
from meshcore.resources import ROOT_NAMESPACE, Resource, matches

POLICY_KINDS = {"AuthorizationPolicy", "PeerAuthentication"}
# Kinds named by string: the waypoint's own kinds live in their own modules.
WAYPOINT_POLICY_KINDS = POLICY_KINDS | {"TrafficPolicy", "RateLimitPolicy"}
ROUTE_KINDS = {"HTTPRoute", "GRPCRoute"}
# What only the control plane uses (the Kubernetes source's inputs): no data-plane view.
SOURCE_ONLY_KINDS = {"EndpointSlice", "ServiceAccount"}
View = dict[tuple, dict]


def node_view(resources: Mapping[tuple, Resource], node: str) -> View:
    local_ns = {r.namespace for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
    return {k: r.raw for k, r in resources.items() if r.kind not in SOURCE_ONLY_KINDS and
            (r.kind not in POLICY_KINDS or r.namespace in local_ns or r.namespace == ROOT_NAMESPACE)}


def waypoint_view(resources: Mapping[tuple, Resource], namespace: str, gateway: str) -> View:
    own = [r for r in resources.values() if r.namespace == namespace]
    keep = {("Namespace", "", namespace), ("Gateway", namespace, gateway)}
    services = {r.key for r in own if r.kind == "Service"}
    for route in (r for r in own if r.kind in ROUTE_KINDS):
        keep.add(route.key)
        services |= {("Service", ns, name) for ns, name in _backend_services(route)}
    keep |= {s for s in services if s in resources}
    for s in services:
        svc = resources.get(s)
        if svc is None or not svc.spec.selector:  # no selector: Kubernetes selects no pods
            continue
        keep |= {r.key for r in resources.values() if r.kind == "WorkloadEntry" and r.namespace == svc.namespace
                 and matches(svc.spec.selector, r.spec.labels)}
    keep |= {r.key for r in resources.values()
             if r.kind in WAYPOINT_POLICY_KINDS and r.namespace in (namespace, ROOT_NAMESPACE)}
    return {k: resources[k].raw for k in resources if k in keep}


def _backend_services(route: Resource) -> set[tuple[str, str]]:
    """(namespace, name) of every Service a route's rules send to (Gateway API backendRefs:
    group "" and kind Service by default, namespace defaults to the route's)."""
    out = set()
    rules: Any = (route.raw.get("spec") or {}).get("rules") or []
    for rule in rules if isinstance(rules, list) else []:
        refs = rule.get("backendRefs") if isinstance(rule, dict) else None
        for ref in refs if isinstance(refs, list) else []:
            if isinstance(ref, dict) and ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" \
                    and isinstance(ref.get("name"), str):
                out.add((ref.get("namespace") or route.namespace, ref["name"]))
    return out


class SubscriptionRefused(ValueError):
    pass


def subscriber_view(caller: str, trust_domain: str, kind: str, name: str | None, namespace: str | None = None
                    ) -> Callable[[Mapping[tuple, Resource]], View]:
    """The view a caller (its certificate's URI SAN) may watch, or SubscriptionRefused
    saying why. A node (node credential) watches its own node's view; a waypoint (the
    workload certificate of its Deployment's ServiceAccount) watches the view of a Gateway
    in its own namespace: a workload of one namespace never reads another's routes."""
    if kind == "node":
        node = node_from_identity(caller, trust_domain)
        if node is None:
            raise SubscriptionRefused(f"{caller} is not a node credential of trust domain {trust_domain}")
        if name not in (None, node):
            raise SubscriptionRefused(f"node {node} may only watch its own view, not {name!r}")
        return lambda resources: node_view(resources, node)
    if kind == "waypoint":
        try:
            who = SpiffeId.parse(caller)
        except ValueError:
            raise SubscriptionRefused(f"{caller} is not a workload identity: a waypoint presents its "
                                      "ServiceAccount's certificate") from None
        if who.trust_domain != trust_domain or not name or who.namespace != (namespace or who.namespace):
            raise SubscriptionRefused(f"{caller} may only watch a waypoint (Gateway) of namespace {who.namespace} "
                                      f"in trust domain {trust_domain}, not {namespace}/{name}")
        return lambda resources: waypoint_view(resources, who.namespace, name)
    raise SubscriptionRefused(f"unknown subscriber kind {kind!r} (expected node or waypoint)")


def delta(old: Mapping[tuple, dict], new: Mapping[tuple, dict]) -> tuple[list[dict], list[list[str]]]:
    upserts = [v for k, v in new.items() if old.get(k) != v]
    deletes = [list(k) for k in old if k not in new]
    return upserts, deletes


def allowed_identities(resources: Mapping[tuple, Resource], node: str, trust_domain: str) -> set[str]:
    return {workload_identity(trust_domain, r.namespace, r.spec.service_account)
            for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
