"""Gateway API `ReferenceGrant` (gateway.networking.k8s.io/v1beta1, and v1) and `GatewayClass`,
and the one rule that says whether a route's backendRef may be followed (pure).

ReferenceGrant (apis/v1beta1/referencegrant_types.go): in the namespace of the objects it
opens, `from` lists (group, kind, namespace) of referrers, `to` lists (group, kind, name?) of
what they may refer to; no `name` means every object of that kind.

`backend_permitted` is the rule Trellis applies to a mesh route's backendRef (GEP-1294 with
its own exception). GEP-1294 lets mesh routes send to any namespace without a grant because
"routes augment existing Services, rather than exposing them to a broader scope", and asks
for ReferenceGrant where an implementation *does* widen what a caller reaches. A Trellis
waypoint does: it forwards with its own identity, so a route whose backend is in a third
namespace would let every caller of the Service reach that backend as the waypoint, past the
backend's own AuthorizationPolicies. So, a backendRef is followed when the backend is
- in the route's own namespace, or
- the Service the request was addressed to (the parent; a consumer route's usual backend,
  as in the MeshConsumerRoute conformance test), or
- allowed by a ReferenceGrant in the backend's namespace (from the route's kind in the
  route's namespace, to Service, that name or any).
Otherwise it is not (`ResolvedRefs=False/RefNotPermitted`, and the share of requests that
would have gone there gets 500, the spec's rule for an invalid backendRef)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .gateway import GATEWAY_GROUP, GROUP, KIND, bounded_string, max_items, namespace_name, object_name
from .schema import F, anything, list_of, obj

CONTROLLER_NAME = "trellis.dev/waypoint-controller"
CONTROLLER = bounded_string(re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"),
    "controller name (a domain-prefixed path, e.g. example.net/gateway-controller)", 253)


@dataclass(frozen=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True)
class GrantTo:
    group: str
    kind: str
    name: str | None = None


@dataclass(frozen=True)
class ReferenceGrantSpec:
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]


def _at_least_one(check):
    def wrapped(v, path, problems):
        if isinstance(v, list) and not v:
            problems.append((path, "must list at least one entry"))
            return None
        return check(v, path, problems)
    return wrapped


_group = bounded_string(GROUP, "API group", 253, 0)
_kind = bounded_string(KIND, "kind", 63)
_from = obj(GrantFrom, {"group": F("group", _group, required=True), "kind": F("kind", _kind, required=True),
                        "namespace": F("namespace", namespace_name, required=True)})
_to = obj(GrantTo, {"group": F("group", _group, required=True), "kind": F("kind", _kind, required=True),
                    "name": F("name", object_name)})
reference_grant_spec = obj(ReferenceGrantSpec, {
    "from": F("from_", _at_least_one(max_items(list_of(_from), 16)), required=True),
    "to": F("to", _at_least_one(max_items(list_of(_to), 16)), required=True)})


@dataclass(frozen=True)
class GatewayClassSpec:
    controller_name: str
    description: str | None = None

    @property
    def ours(self) -> bool:
        return self.controller_name == CONTROLLER_NAME


gateway_class_spec = obj(GatewayClassSpec, {
    "controllerName": F("controller_name", CONTROLLER, required=True),
    "description": F("description", bounded_string(None, "description", 64, 0)),
    # a class's parameters are for its controller; trellis-waypoint takes none (ignored, as Istio's)
    "parametersRef": F("", anything)})


def backend_permitted(grants: Iterable, route_kind: str, route_namespace: str, backend_namespace: str,
                      backend_name: str, parent: tuple[str, str] | None = None) -> bool:
    """Whether a route (kind, namespace) may send to Service backend_namespace/backend_name
    when a request reached it through Service `parent` (namespace, name); `grants` are
    Resources, the ReferenceGrants among them count (see the module's docstring)."""
    if backend_namespace == route_namespace or parent == (backend_namespace, backend_name):
        return True
    for g in grants:
        if g.kind != "ReferenceGrant" or g.namespace != backend_namespace:
            continue
        if not any(f.group == GATEWAY_GROUP and f.kind == route_kind and f.namespace == route_namespace
                   for f in g.spec.from_):
            continue
        if any(t.group == "" and t.kind == "Service" and t.name in (None, backend_name) for t in g.spec.to):
            return True
    return False


def backend_problem(grants: Iterable, route_kind: str, route_namespace: str, group: str, kind: str,
                    backend_namespace: str, backend_name: str, port: int | None,
                    service_ports: Iterable[int] | None, parent: tuple[str, str] | None = None) -> str | None:
    """Why a route's backendRef cannot be used, as the spec's ResolvedRefs reason, checked in
    this order: its kind (InvalidKind), its ReferenceGrant (RefNotPermitted), the Service and
    its port (BackendNotFound; `service_ports` None: no such Service); None when it can be.
    The control plane's status and the waypoint's router both ask this."""
    if (group, kind) != ("", "Service"):
        return "InvalidKind"
    if not backend_permitted(grants, route_kind, route_namespace, backend_namespace, backend_name, parent):
        return "RefNotPermitted"
    if service_ports is None or (port is not None and port not in service_ports):
        return "BackendNotFound"
    return None
