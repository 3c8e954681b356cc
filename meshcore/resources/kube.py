"""Kubernetes' own kinds as users write them and as the API server returns them.

Real manifests carry many fields the mesh never reads (a Service's
`sessionAffinity`, `ipFamilies`; a Pod's whole container spec; every object's `status`).
These kinds accept every field of the Kubernetes schema (as of v1.34) and ignore what the
mesh does not use, so `kubectl get -o yaml` output and Helm-rendered manifests load; a
field that is in no version of the schema is still an error (a typo). Our own
trellis.dev kinds stay strict (kinds.py).

- v1 Pod: PodSpec(node_name, service_account, host_network, container_ports) plus the
  status fields a workload needs (PodStatus(pod_ip, phase)); the Kubernetes source makes
  a scheduled, running Pod into the WorkloadEntry shape the data plane consumes.
- discovery.k8s.io/v1 EndpointSlice: addressType, endpoints[].addresses, ports.
- v1 ServiceAccount: nothing the mesh reads (it names identities; listed for the CA)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .schema import DNS_LABEL, F, anything, enum, integer, ip_address, list_of, obj, port, string

# Named ports: Kubernetes' IANA_SVC_NAME (at most 15 characters, a letter among them).
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def ignored(*names: str) -> dict[str, F]:
    """Fields of the Kubernetes schema that the mesh accepts and does not read."""
    return {n: F("", anything) for n in names}


def target_port(v, path, problems):
    """`targetPort`: a number, or the name of a container port on each endpoint."""
    if isinstance(v, str):
        if PORT_NAME.match(v):
            return v
        problems.append((path, f"{v!r} is neither a port number 1-65535 nor a port name (IANA_SVC_NAME: "
                               "at most 15 lowercase letters, digits and '-', with a letter)"))
        return None
    return port(v, path, problems)


SERVICE_IGNORED = ignored(
    "allocateLoadBalancerNodePorts", "clusterIPs", "externalIPs", "externalTrafficPolicy",
    "healthCheckNodePort", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy", "loadBalancerClass",
    "loadBalancerIP", "loadBalancerSourceRanges", "publishNotReadyAddresses", "sessionAffinity",
    "sessionAffinityConfig", "trafficDistribution")
SERVICE_PORT_IGNORED = ignored("nodePort")
# A Service port's `appProtocol` (Kubernetes validates it as a qualified name: an optional DNS
# subdomain prefix and '/', then a name of at most 63 characters).
APP_PROTOCOL = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


# -- Pod ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodStatus:
    pod_ip: str | None = None
    phase: str = ""


@dataclass(frozen=True)
class PodSpec:
    node_name: str | None = None
    service_account: str = "default"
    host_network: bool = False
    container_ports: dict = field(default_factory=dict)  # port name -> number, for named targetPorts
    status: PodStatus = PodStatus()


_container_port = obj(dict, {"containerPort": F("containerPort", port, required=True),
                             "name": F("name", string(PORT_NAME, "port name"), default=""),
                             "protocol": F("protocol", enum(*PROTOCOLS), default="TCP"),
                             **ignored("hostIP", "hostPort")})
_container = obj(dict, {"name": F("name", string(DNS_LABEL, "container name"), required=True),
                        "ports": F("ports", list_of(_container_port), default=tuple),
                        **ignored("args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle",
                                  "livenessProbe", "readinessProbe", "resizePolicy", "resources", "restartPolicy",
                                  "restartPolicyRules", "securityContext", "startupProbe", "stdin", "stdinOnce",
                                  "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
                                  "volumeMounts", "workingDir")})
_pod_spec = obj(dict, {
    "containers": F("containers", list_of(_container), required=True),
    "nodeName": F("nodeName", string()),
    "serviceAccountName": F("serviceAccountName", string()),
    "serviceAccount": F("serviceAccount", string()),   # deprecated alias of serviceAccountName
    "hostNetwork": F("hostNetwork", anything, default=False),
    **ignored("activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
              "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostPID", "hostUsers",
              "hostname", "hostnameOverride", "imagePullSecrets", "initContainers", "nodeSelector", "os",
              "overhead", "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims",
              "resources", "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates",
              "securityContext", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
              "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes")})
_pod_status = obj(PodStatus, {
    "podIP": F("pod_ip", ip_address), "phase": F("phase", string(), default=""),
    **ignored("conditions", "containerStatuses", "ephemeralContainerStatuses", "extendedResourceClaimStatus",
              "hostIP", "hostIPs", "initContainerStatuses", "message", "nominatedNodeName", "observedGeneration",
              "podIPs", "qosClass", "reason", "resize", "resourceClaimStatuses", "startTime")})


def pod(d, path, problems):
    """A Pod document minus apiVersion/kind/metadata: {spec, status}."""
    out = obj(dict, {"spec": F("spec", _pod_spec, required=True),
                     "status": F("status", _pod_status, default=PodStatus)})(d, path, problems)
    if out is None:
        return None
    spec = out["spec"]
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c["ports"] if p["name"]}
    status = out["status"]
    return PodSpec(node_name=spec["nodeName"], service_account=spec["serviceAccountName"] or spec["serviceAccount"]
                   or "default", host_network=spec["hostNetwork"] is True, container_ports=ports,
                   status=status if isinstance(status, PodStatus) else PodStatus())


# -- EndpointSlice -------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointSliceSpec:
    address_type: str
    endpoints: tuple = ()   # ({"addresses": (...), "ready": bool}, ...)
    ports: tuple = ()       # ({"name": str, "port": int, "protocol": str}, ...)


_conditions = obj(dict, {"ready": F("ready", anything), "serving": F("serving", anything),
                         "terminating": F("terminating", anything)})
_endpoint = obj(dict, {"addresses": F("addresses", list_of(string()), required=True),
                       "conditions": F("conditions", _conditions, default=dict),
                       **ignored("deprecatedTopology", "hints", "hostname", "nodeName", "targetRef", "zone")})
_slice_port = obj(dict, {"name": F("name", string(), default=""), "port": F("port", integer(0, 65535)),
                         "protocol": F("protocol", enum(*PROTOCOLS), default="TCP"), **ignored("appProtocol")})
endpoint_slice = obj(EndpointSliceSpec, {
    "addressType": F("address_type", enum("IPv4", "IPv6", "FQDN"), required=True),
    "endpoints": F("endpoints", list_of(_endpoint), default=tuple),
    "ports": F("ports", list_of(_slice_port), default=tuple)})


# -- ServiceAccount ------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceAccountSpec:
    pass


service_account = obj(ServiceAccountSpec, ignored("automountServiceAccountToken", "imagePullSecrets", "secrets"))
