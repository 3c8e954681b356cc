"""The mesh's rules, in one place (pure): who is in the mesh, with which mTLS mode, through
which waypoint, and how principals and namespaces match in policies.

The node agent (what to capture), ztunnel (HBONE or plaintext to a destination), the lab
(which pods to wait for) and the waypoint all decide with these functions, so they cannot
disagree. Each rule follows Istio ambient, with `trellis.dev/` labels:

- enrollment: a pod is in the mesh when its namespace or the pod itself is labelled
  `trellis.dev/dataplane-mode: ambient`, unless the pod is labelled
  `trellis.dev/dataplane-mode: none` (istio-cni's `PodRedirectionEnabled`);
- PeerAuthentication: workload selector > namespace-wide > root namespace > PERMISSIVE,
  UNSET inheriting from the next level;
- waypoint use: `trellis.dev/use-waypoint: <name>` on a Service (or workload) overrides its
  namespace's; the value `none` opts out. A waypoint's own pods (labelled
  `gateway.networking.k8s.io/gateway-name: <gateway>`, as Istio's) never use a waypoint;
- mesh-wide waypoint policy: an AuthorizationPolicy targetRef to the GatewayClass
  `trellis-waypoint` applies at every waypoint when the policy is in the root namespace
  `trellis-system`; from any other namespace it applies to nothing (Istio's rule; State
  warns about it);
- a Service port's protocol: its `appProtocol`, else its name's `<protocol>[-<suffix>]`
  prefix (Istio's protocol selection); undeclared ports are sniffed.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .identity import SpiffeId
from .resources import AMBIENT_LABEL, ROOT_NAMESPACE, WAYPOINT_LABEL, matches
from .resources.gateway import WAYPOINT_CLASS

AMBIENT = "ambient"
NONE = "none"   # on a pod: keep it out of the mesh; as a waypoint name: use none
STRICT, PERMISSIVE = "STRICT", "PERMISSIVE"
SPIFFE_SCHEME = "spiffe://"

Labels = Mapping[str, str]


# ---- enrollment ------------------------------------------------------------------------
@dataclass(frozen=True)
class Enrollment:
    in_mesh: bool
    reason: str   # why, in words an operator can act on


def namespace_in_mesh(labels: Labels | None) -> bool:
    """A namespace labelled for the mesh enrolls its pods (those not opted out)."""
    return (labels or {}).get(AMBIENT_LABEL) == AMBIENT


def enrollment(namespace: str, namespace_labels: Labels | None, *pod_labels: Labels | None) -> Enrollment:
    """Whether a pod is in the mesh. `pod_labels`: every label set the pod carries (a
    WorkloadEntry has its metadata labels and its spec labels; an opt-out in either counts)."""
    modes = {(labels or {}).get(AMBIENT_LABEL) for labels in pod_labels}
    if NONE in modes:
        return Enrollment(False, f"the pod is labelled {AMBIENT_LABEL}={NONE}")
    if AMBIENT in modes:
        return Enrollment(True, f"the pod is labelled {AMBIENT_LABEL}={AMBIENT}")
    if namespace_in_mesh(namespace_labels):
        return Enrollment(True, f"namespace {namespace} is labelled {AMBIENT_LABEL}={AMBIENT}")
    return Enrollment(False, f"namespace {namespace} is not labelled {AMBIENT_LABEL}={AMBIENT}")


def workload_enrollment(workload: Any, namespaces: Mapping[str, Labels]) -> Enrollment:
    """`enrollment` for a WorkloadEntry resource, given every Namespace's labels by name."""
    return enrollment(workload.namespace, namespaces.get(workload.namespace),
                      workload.labels, getattr(workload.spec, "labels", None))


def namespace_labels(resources: Iterable[Any]) -> dict[str, Labels]:
    """name -> labels of every Namespace among `resources` (other kinds are ignored)."""
    return {r.name: dict(r.labels or {}) for r in resources if r.kind == "Namespace"}


def in_mesh(resources: Iterable[Any]) -> dict[str, Enrollment]:
    """"ns/name" -> Enrollment for every WorkloadEntry among `resources`."""
    resources = list(resources)
    ns = namespace_labels(resources)
    return {f"{r.namespace}/{r.name}": workload_enrollment(r, ns) for r in resources if r.kind == "WorkloadEntry"}


# ---- PeerAuthentication ------------------------------------------------------------------
def peer_auth_mode(policies: Iterable[Any], namespace: str, labels: Labels) -> str:
    """Effective mTLS mode of a workload; the first policy by name wins within a level."""
    workload = ns_wide = root = None
    for r in sorted(policies, key=lambda r: (r.namespace or "", r.name)):
        mode, sel = r.spec.mode, r.spec.selector
        if mode not in (STRICT, PERMISSIVE):
            continue  # UNSET inherits from the next level
        if r.namespace == namespace and sel is not None:
            if workload is None and matches(sel, labels):
                workload = mode
        elif r.namespace == namespace and sel is None:
            ns_wide = ns_wide or mode
        elif r.namespace == ROOT_NAMESPACE and sel is None:
            root = root or mode
    return workload or ns_wide or root or PERMISSIVE


# ---- waypoints ---------------------------------------------------------------------------
# The label a waypoint's pods carry (Istio's, from the Gateway API's GEP-1762 conventions).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def serves_waypoint(*label_sets: Labels | None) -> str | None:
    """The Gateway a pod runs as a replica of (its gateway-name label, in any of its label
    sets), or None for an ordinary workload."""
    for labels in label_sets:
        name = (labels or {}).get(GATEWAY_NAME_LABEL)
        if name:
            return name
    return None


def waypoint_for(namespace_labels: Labels | None, own_labels: Labels | None) -> str | None:
    """Name of the waypoint (in the same namespace) a Service or workload uses, or None.
    Its own label overrides its namespace's; `none` opts out even when the namespace has one."""
    own = (own_labels or {}).get(WAYPOINT_LABEL)
    name = own if own is not None else (namespace_labels or {}).get(WAYPOINT_LABEL)
    return None if name in (None, "", NONE) else name


def applies_at_every_waypoint(policy_namespace: str | None, kind: str, name: str) -> bool:
    """Whether a policy's targetRef (`kind`, `name`) makes it apply at every waypoint: the
    waypoints' GatewayClass, targeted from the root namespace (Istio's mesh-wide waypoint
    policy). A GatewayClass target from elsewhere applies nowhere."""
    return kind == "GatewayClass" and name == WAYPOINT_CLASS and policy_namespace == ROOT_NAMESPACE


# ---- a Service port's declared protocol -------------------------------------------------
# Istio's protocol names (matched case-insensitively) and Kubernetes' standard appProtocols.
PROTOCOLS = {p.lower(): p for p in ("TCP", "UDP", "GRPC", "GRPC-Web", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS",
                                    "TLS", "Mongo", "Redis", "MySQL")}
KUBERNETES_APP_PROTOCOLS = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP", "kubernetes.io/wss": "HTTPS"}
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC"})


def port_protocol(name: str, app_protocol: str | None = None, transport: str = "TCP") -> str | None:
    """What a Service port declares it speaks (Istio's protocol selection): `appProtocol` when
    set (`kubernetes.io/h2c` is HTTP2, `kubernetes.io/ws` HTTP), else the port name's
    prefix before the first '-' (`http-web`, `grpc`, `grpc-web-ui`); None when it declares
    nothing Istio knows (the traffic is sniffed)."""
    if transport != "TCP":
        return transport
    value = app_protocol if app_protocol is not None else name
    if value in KUBERNETES_APP_PROTOCOLS:
        return KUBERNETES_APP_PROTOCOLS[value]
    value = value.lower()
    if value.startswith("grpc-web"):
        return PROTOCOLS["grpc-web"]
    return PROTOCOLS.get(value.partition("-")[0])


def upstream_http_version(protocol: str | None) -> str | None:
    """The HTTP version a waypoint speaks to a port declaring `protocol` (Istio's cluster
    protocol options): "2" (h2c prior knowledge) for HTTP2 and gRPC, "1.1" for HTTP, None to
    speak what the client spoke (Envoy's USE_DOWNSTREAM_PROTOCOL, Istio's choice for ports
    it sniffs). gRPC-Web is carried as the client sent it: Istio turns it into gRPC with a
    filter the waypoint does not have."""
    if protocol in HTTP2_PROTOCOLS:
        return "2"
    return "1.1" if protocol in ("HTTP", "HTTP_PROXY") else None


# ---- principals and namespaces in policies --------------------------------------------
def principal(identity: str | None) -> str | None:
    """Istio's principal: the SPIFFE ID without its scheme ("cluster.local/ns/default/sa/web")."""
    if identity is None:
        return None
    return identity[len(SPIFFE_SCHEME):] if identity.startswith(SPIFFE_SCHEME) else identity


@functools.lru_cache(maxsize=4096)
def namespace_of(identity: str | None) -> str | None:
    """The namespace a workload identity belongs to; None for anything else (a node's
    credential, a malformed or absent identity). Cached: authorization asks it per
    decision for the same few peer identities, and parsing one costs ~1.3 us."""
    if not identity:
        return None
    try:
        return SpiffeId.parse(identity if identity.startswith(SPIFFE_SCHEME) else SPIFFE_SCHEME + identity).namespace
    except ValueError:
        return None


def string_matches(pattern: str, value: str | None) -> bool:
    """Istio's string match: exact, `*` (any present value), `prefix*` or `*suffix`."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def principal_matches(patterns: Iterable[str], identity: str | None) -> bool:
    """Whether a peer's identity matches any principal pattern of a policy; patterns and
    identity compare without the `spiffe://` scheme, as Istio writes principals."""
    value = principal(identity)
    return any(string_matches(principal(p), value) for p in patterns)


def namespace_matches(patterns: Iterable[str], identity: str | None) -> bool:
    ns = namespace_of(identity)
    return any(string_matches(p, ns) for p in patterns)
