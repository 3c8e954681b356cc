"""The resource kinds and their typed specs (field names snake_case; YAML camelCase).

- v1 Namespace: labels `trellis.dev/dataplane-mode: ambient`, `trellis.dev/use-waypoint`.
- v1 Service: ServiceSpec(cluster_ip, selector, ports[ServicePort(name, port, target_port, protocol,
  app_protocol)], type, external_name). A headless Service (`clusterIP: None`) has no VIP
  (cluster_ip None, headless True) and an ExternalName Service neither VIP nor endpoints:
  both valid, as in Kubernetes (meshcore.state says what the data path does with them).
- trellis.dev/v1alpha1 WorkloadEntry: WorkloadEntrySpec(address, labels, service_account,
  node, network_namespace, ports).
- trellis.dev/v1alpha1 AuthorizationPolicy: AuthorizationPolicySpec(selector, target_refs,
  action, rules[Rule(from_[Source...], to[Operation...], when[Condition...])]) with Istio's
  semantics, typed and validated in authzpolicy.py.
- trellis.dev/v1alpha1 PeerAuthentication: PeerAuthenticationSpec(selector, mode).
- gateway.networking.k8s.io/v1 Gateway, HTTPRoute, GRPCRoute and trellis.dev/v1alpha1 TrafficPolicy,
  RateLimitPolicy: the waypoint's kinds, typed in gateway.py, routes.py and policies.py;
  GatewayClass and ReferenceGrant (v1beta1 and v1) in grants.py.
- v1 Pod, v1 ServiceAccount, discovery.k8s.io/v1 EndpointSlice: kube.py (every Kubernetes field accepted).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from . import kube
from .authzpolicy import (AuthorizationPolicySpec, Condition, Operation, Rule, Source,  # noqa: F401 (re-exported)
                          authorization_policy_spec)
from .gateway import TargetRef, check_annotations, gateway_spec  # noqa: F401 (TargetRef re-exported)
from .grants import gateway_class_spec, reference_grant_spec
from .policies import rate_limit_policy_spec, traffic_policy_spec
from .routes import grpc_route_spec, http_route_spec
from .schema import DNS_LABEL, DNS_SUBDOMAIN, F, enum, ip_address, labels, list_of, obj, port, string, str_map

TRELLIS = "trellis.dev/v1alpha1"
GATEWAY = "gateway.networking.k8s.io/v1"
GATEWAY_BETA = "gateway.networking.k8s.io/v1beta1"


@dataclass(frozen=True)
class NamespaceSpec:
    pass


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or a port name each endpoint resolves (Kubernetes semantics)
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str | None = None   # `appProtocol`: what the port speaks (meshcore.mesh.port_protocol reads it)

    def target_on(self, endpoint_ports: Mapping[str, int]) -> int | None:
        """The port to reach on one endpoint: a named targetPort is looked up in that
        endpoint's named ports (a Pod's container ports, a WorkloadEntry's `ports`); an
        endpoint without that name does not serve this Service port (None), as in Kubernetes."""
        if isinstance(self.target_port, int):
            return self.target_port
        return endpoint_ports.get(self.target_port)


SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


@dataclass(frozen=True)
class ServiceSpec:
    cluster_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None   # None: headless, or ExternalName
    selector: dict = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    type: str = "ClusterIP"
    external_name: str | None = None   # type ExternalName: the DNS name it aliases
    headless: bool = False             # `clusterIP: None`

    @property
    def cluster_ip_text(self) -> str:
        """CLUSTER-IP as kubectl prints it: the address, `None` (headless) or `<none>`."""
        return str(self.cluster_ip) if self.cluster_ip is not None else "None" if self.headless else "<none>"


@dataclass(frozen=True)
class WorkloadEntrySpec:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    node: str
    labels: dict = field(default_factory=dict)
    service_account: str = "default"
    network_namespace: str | None = None
    ports: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeerAuthenticationSpec:
    selector: dict | None = None
    mode: str = "PERMISSIVE"


@dataclass(frozen=True)
class OpaqueSpec:
    fields: Any = None


def _port_entry(v, path, problems):
    if isinstance(v, dict) and "targetPort" not in v and isinstance(v.get("port"), int):
        v = dict(v, targetPort=v["port"])
    return _port_obj(v, path, problems)


_port_obj = obj(ServicePort, {"name": F("name", string(DNS_LABEL, "port name"), default=""),
                              "port": F("port", port, required=True),
                              "targetPort": F("target_port", kube.target_port, required=True),
                              "protocol": F("protocol", enum(*kube.PROTOCOLS), default="TCP"),
                              "appProtocol": F("app_protocol", string(kube.APP_PROTOCOL, "appProtocol (an IANA "
                                               "service name, or a prefixed name such as kubernetes.io/h2c)")),
                              **kube.SERVICE_PORT_IGNORED})


HEADLESS = object()   # `clusterIP: None`, Kubernetes' spelling of "no VIP" (a headless Service)


def _cluster_ip(v, path, problems):
    if v == "":   # Kubernetes' "allocate one"
        return None
    return HEADLESS if v == "None" else ip_address(v, path, problems)


def _service_post(spec: ServiceSpec, path, problems):
    """Kubernetes' own rules (core/validation ValidateService) for what the API server would
    refuse, so a directory loads what a cluster would: an ExternalName Service has an
    externalName and no clusterIP; headless is not for NodePort/LoadBalancer; ports may be
    empty only for headless and ExternalName Services. Outside a cluster a ClusterIP
    Service needs its address written down (nothing allocates one)."""
    if spec.type == "ExternalName":
        if spec.cluster_ip is not None:
            problems.append((f"{path}.clusterIP", "must be empty for ExternalName Services"))
        if spec.external_name is None:
            problems.append((f"{path}.externalName", "is required for ExternalName Services"))
    elif spec.external_name is not None:
        problems.append((f"{path}.externalName", f"is only for type ExternalName (this is {spec.type})"))
    elif spec.cluster_ip is HEADLESS and spec.type != "ClusterIP":
        problems.append((f"{path}.clusterIP", f"may not be None for {spec.type} Services"))
    elif spec.cluster_ip is None:   # the API server allocates one; a config directory has none to give
        problems.append((f"{path}.clusterIP", "is required: outside a cluster nothing allocates one; give a free "
                                              "address, e.g. in the lab's 10.96.0.0/16, or None for a headless "
                                              "Service"))
    if not spec.ports and spec.cluster_ip is not HEADLESS and spec.type != "ExternalName":
        problems.append((f"{path}.ports", "is required (only headless and ExternalName Services may have none)"))
    _unique_ports(spec, path, problems)


def _external_name(v, path, problems):
    """A lowercase RFC 1123 DNS name, one trailing dot allowed (Kubernetes' rule)."""
    name = v[:-1] if isinstance(v, str) and v.endswith(".") else v
    return v if string(DNS_SUBDOMAIN, "DNS name (RFC 1123, lowercase)")(name, path, problems) is not None else None


_service_spec = obj(ServiceSpec, {
    "clusterIP": F("cluster_ip", _cluster_ip),
    "selector": F("selector", labels, default=dict),
    "ports": F("ports", list_of(_port_entry), default=tuple),
    "type": F("type", enum(*SERVICE_TYPES), default="ClusterIP"),
    "externalName": F("external_name", _external_name), **kube.SERVICE_IGNORED}, post=_service_post)


def _service(v, path, problems):
    out = _service_spec(v, path, problems)
    return replace(out, cluster_ip=None, headless=True) if out is not None and out.cluster_ip is HEADLESS else out


def _unique_ports(spec: ServiceSpec, path, problems):
    seen = set()
    for i, p in enumerate(spec.ports):
        if p.port in seen:
            problems.append((f"{path}.ports[{i}].port", f"port {p.port} is listed twice"))
        seen.add(p.port)


_match_labels = obj(dict, {"matchLabels": F("matchLabels", labels, required=True)})


def _selector(v, path, problems):
    out = _match_labels(v, path, problems)
    return None if out is None else out["matchLabels"]


def _opaque(v, path, problems):
    if not isinstance(v, dict):
        problems.append((path, "must be a mapping"))
        return None
    return OpaqueSpec(v)


def _mtls(v, path, problems):
    out = obj(dict, {"mode": F("mode", enum("STRICT", "PERMISSIVE", "UNSET"), required=True)})(v, path, problems)
    return None if out is None else out["mode"]


_pa = obj(dict, {"selector": F("selector", _selector), "mtls": F("mode", _mtls, default="PERMISSIVE")})


def _peer_auth(v, path, problems):
    out = _pa(v, path, problems)
    return None if out is None else PeerAuthenticationSpec(selector=out["selector"], mode=out["mode"])


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    namespaced: bool
    spec: Any  # Check
    spec_required: bool = True
    status: bool = False      # a `status` is accepted and ignored (Kubernetes' own kinds)
    top_level: bool = False   # `spec` checks the whole object but apiVersion/kind/metadata
    meta_check: Any = None    # Check on the validated metadata (a Gateway's replicas annotation)


KINDS: dict[tuple[str, str], Kind] = {(k.api_version, k.kind): k for k in [
    Kind("v1", "Namespace", False, obj(NamespaceSpec, kube.ignored("finalizers")), spec_required=False, status=True),
    Kind("v1", "Service", True, _service, status=True),
    Kind("v1", "Pod", True, kube.pod, top_level=True),
    Kind("v1", "ServiceAccount", True, kube.service_account, top_level=True),
    Kind("discovery.k8s.io/v1", "EndpointSlice", True, kube.endpoint_slice, top_level=True),
    Kind(TRELLIS, "WorkloadEntry", True, obj(WorkloadEntrySpec, {
        "address": F("address", ip_address, required=True),
        "node": F("node", string(DNS_SUBDOMAIN, "node name"), required=True),
        "labels": F("labels", labels, default=dict),
        "serviceAccount": F("service_account", string(DNS_SUBDOMAIN, "service account name"), default="default"),
        "networkNamespace": F("network_namespace", string()),
        "ports": F("ports", str_map(string(), port), default=dict)})),
    Kind(TRELLIS, "AuthorizationPolicy", True, authorization_policy_spec(_selector), spec_required=False),
    Kind(TRELLIS, "PeerAuthentication", True, _peer_auth, spec_required=False),
    # Gateway API kinds carry a status their controllers write: accepted (kubectl get -o yaml loads), never read
    Kind(GATEWAY, "GatewayClass", False, gateway_class_spec, status=True),
    Kind(GATEWAY, "Gateway", True, gateway_spec, meta_check=check_annotations, status=True),
    Kind(GATEWAY, "HTTPRoute", True, http_route_spec, status=True),
    Kind(GATEWAY, "GRPCRoute", True, grpc_route_spec, status=True),
    Kind(GATEWAY_BETA, "ReferenceGrant", True, reference_grant_spec),
    Kind(GATEWAY, "ReferenceGrant", True, reference_grant_spec),
    Kind(TRELLIS, "TrafficPolicy", True, traffic_policy_spec),
    Kind(TRELLIS, "RateLimitPolicy", True, rate_limit_policy_spec),
]}
