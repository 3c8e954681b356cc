"""What each subscriber of the watch receives (pure).

A node: every Namespace, Service, WorkloadEntry, Gateway and HTTPRoute (any of them may be
a destination), and only the policies it enforces: those in namespaces with a workload on
that node, or in the mesh root namespace.

A waypoint (a Gateway of class trellis-waypoint): what it routes and enforces for its own
namespace: the Namespace, its Gateway, the namespace's Services and routes, the consumer
routes of other namespaces whose parent is one of its Services, the Services those routes
send to (in any namespace) and the ReferenceGrants of those Services' namespaces, the
workloads behind all of those Services (the endpoints it picks from), and the policies of
its namespace and of the root namespace."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from meshcore.identity import SpiffeId, node_from_identity, workload_identity
from meshcore.mesh import serves_waypoint
from meshcore.resources import ROOT_NAMESPACE, Resource, matches
from meshcore.state.waypoints import default_service_account

POLICY_KINDS = {"AuthorizationPolicy", "PeerAuthentication"}
# Kinds named by string: the waypoint's own kinds live in their own modules.
WAYPOINT_POLICY_KINDS = POLICY_KINDS | {"TrafficPolicy", "RateLimitPolicy"}
ROUTE_KINDS = {"HTTPRoute", "GRPCRoute"}
# What only the control plane uses (the Kubernetes source's inputs): no data-plane view.
SOURCE_ONLY_KINDS = {"EndpointSlice", "ServiceAccount"}
# What nodes never use (they route nothing at L7): kept out of their views
NODE_SKIP_KINDS = SOURCE_ONLY_KINDS | {"GatewayClass", "ReferenceGrant"}
View = dict[tuple, dict]


def node_view(resources: Mapping[tuple, Resource], node: str) -> View:
    local_ns = {r.namespace for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
    return {k: r.raw for k, r in resources.items() if r.kind not in NODE_SKIP_KINDS and
            (r.kind not in POLICY_KINDS or r.namespace in local_ns or r.namespace == ROOT_NAMESPACE)}


def waypoint_view(resources: Mapping[tuple, Resource], namespace: str, gateway: str) -> View:
    own = [r for r in resources.values() if r.namespace == namespace]
    keep = {("Namespace", "", namespace), ("Gateway", namespace, gateway)}
    services = {r.key for r in own if r.kind == "Service"}
    for route in (r for r in resources.values() if r.kind in ROUTE_KINDS and _routes_into(r, namespace)):
        keep.add(route.key)
        services |= {("Service", ns, name) for ns, name in _backend_services(route)}
    keep |= {s for s in services if s in resources}
    # the grants that open the backends' namespaces (routing.py asks meshcore's backend_problem)
    keep |= {r.key for r in resources.values() if r.kind == "ReferenceGrant"
             and any(s[1] == r.namespace for s in services)}
    for s in services:
        svc = resources.get(s)
        if svc is None or not svc.spec.selector:  # no selector: Kubernetes selects no pods
            continue
        keep |= {r.key for r in resources.values() if r.kind == "WorkloadEntry" and r.namespace == svc.namespace
                 and matches(svc.spec.selector, r.spec.labels)}
    keep |= {r.key for r in resources.values()
             if r.kind in WAYPOINT_POLICY_KINDS and r.namespace in (namespace, ROOT_NAMESPACE)}
    return {k: resources[k].raw for k in resources if k in keep}


def _routes_into(route: Resource, namespace: str) -> bool:
    """A route of this namespace (producer routes, and consumer routes for its callers), or a
    consumer route of another namespace whose Service parent is here: this namespace's
    waypoint applies it to callers from the route's namespace (GAMMA; routing.py)."""
    return route.namespace == namespace or any(
        p.is_service and p.namespace == namespace for p in route.spec.parent_refs)


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
    in its own namespace: a workload of one namespace never reads another's routes, except
    the consumer routes written for its own Services."""
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
        namespace, name = waypoint_gateway(name, namespace)
        if who.trust_domain != trust_domain or not name or who.namespace != (namespace or who.namespace):
            raise SubscriptionRefused(f"{caller} may only watch a waypoint (Gateway) of namespace {who.namespace} "
                                      f"in trust domain {trust_domain}, not {namespace}/{name}")
        return lambda resources: waypoint_view(resources, who.namespace, name)
    raise SubscriptionRefused(f"unknown subscriber kind {kind!r} (expected node or waypoint)")


def waypoint_gateway(name: str | None, namespace: str | None = None) -> tuple[str | None, str | None]:
    """(namespace, gateway) from a waypoint subscription's name, "<gateway>" or "<ns>/<gateway>"."""
    if name and "/" in name:
        ns, name = name.split("/", 1)
        return ns, name
    return namespace, name


def waypoint_service_accounts(resources: Mapping[tuple, Resource], namespace: str, gateway: str) -> set[str]:
    """The ServiceAccounts a waypoint runs as: the Gateway's name (Istio's default) and
    whatever its replicas (workloads labelled with its gateway-name) name. Whoever may
    create a pod in a namespace may already use any of its ServiceAccounts, so a replica's
    label grants nothing a namespace owner did not have."""
    return {default_service_account(gateway)} | {
        r.spec.service_account for r in resources.values()
        if r.kind == "WorkloadEntry" and r.namespace == namespace
        and serves_waypoint(r.labels, getattr(r.spec, "labels", None)) == gateway}


def _waypoint_gateway_missing(resources: Mapping[tuple, Resource], namespace: str, gateway: str) -> str | None:
    gw = resources.get(("Gateway", namespace, gateway))
    if gw is None or not getattr(gw.spec, "is_waypoint", False):
        return (f"there is no Gateway of class trellis-waypoint named {gateway} in namespace {namespace}"
                + (f" (it has class {gw.spec.gateway_class_name})" if gw is not None else ""))
    return None


def waypoint_watch_refusal(resources: Mapping[tuple, Resource], caller: str, namespace: str | None,
                           gateway: str | None) -> str | None:
    """Why `caller` (already checked by subscriber_view: a workload identity of the
    Gateway's namespace) may not watch waypoint `gateway`, or None: the Gateway must exist
    with class trellis-waypoint and the caller be one of its ServiceAccounts."""
    who = SpiffeId.parse(caller)
    ns = namespace or who.namespace
    missing = _waypoint_gateway_missing(resources, ns, gateway or "")
    if missing:
        return f"{caller} may not watch waypoint {ns}/{gateway}: {missing}"
    accounts = waypoint_service_accounts(resources, ns, gateway or "")
    if who.service_account not in accounts:
        return (f"{caller} may not watch waypoint {ns}/{gateway}: ServiceAccount {who.service_account} is not "
                f"the waypoint's (expected {', '.join(sorted(accounts))})")
    return None


def waypoint_sign_refusal(resources: Mapping[tuple, Resource], caller: str, trust_domain: str) -> str | None:
    """Why a workload caller (not a node) may not have a certificate signed, or None. A
    waypoint renews its own certificate: the CSR's only URI SAN is the caller itself,
    and only while the caller is the ServiceAccount of a trellis-waypoint Gateway of its
    namespace. Any other workload gets its certificate through its node."""
    try:
        who = SpiffeId.parse(caller)
    except ValueError:
        return f"{caller} is neither a node credential nor a workload identity of trust domain {trust_domain}"
    if who.trust_domain != trust_domain:
        return f"{caller} is not of trust domain {trust_domain}"
    for r in resources.values():
        if r.kind == "Gateway" and r.namespace == who.namespace and getattr(r.spec, "is_waypoint", False) \
                and who.service_account in waypoint_service_accounts(resources, r.namespace, r.name):
            return None
    return (f"{caller} is not a node credential, nor the ServiceAccount of any waypoint (Gateway of class "
            f"trellis-waypoint) in namespace {who.namespace}: workloads get certificates through their node's ztunnel")


def delta(old: Mapping[tuple, dict], new: Mapping[tuple, dict]) -> tuple[list[dict], list[list[str]]]:
    upserts = [v for k, v in new.items() if old.get(k) != v]
    deletes = [list(k) for k in old if k not in new]
    return upserts, deletes


def allowed_identities(resources: Mapping[tuple, Resource], node: str, trust_domain: str) -> set[str]:
    return {workload_identity(trust_domain, r.namespace, r.spec.service_account)
            for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
