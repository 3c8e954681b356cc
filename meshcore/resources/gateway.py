"""Gateway API shared types (gateway.networking.k8s.io/v1, apis/v1/shared_types.go) and the
`Gateway` kind as a waypoint declares it.

A waypoint is a Gateway of class `trellis-waypoint` with Istio's waypoint listener shape:
one listener, protocol `HBONE`, the HBONE port (Istio: class `istio-waypoint`, listener `mesh`).
Replicas: Istio leaves them to `kubectl scale`/HPA on the generated Deployment (or a
parametersRef ConfigMap); the lab has no Deployment to scale, so the Gateway carries the
annotation `trellis.dev/replicas` (default 1). Gateways of other classes are accepted and
ignored (another controller may own them).

Tracing: Istio points a waypoint at a collector with a Telemetry resource naming a
MeshConfig extension provider; Trellis has no MeshConfig, so a waypoint Gateway carries the
two settings that matter as annotations, `trellis.dev/otlp-endpoint` (an OTLP/HTTP base URL,
or `none`) and `trellis.dev/trace-sampling` (Istio's randomSamplingPercentage, 0-100).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .schema import F, Problems, enum, integer, ip_address, labels, list_of, obj, port, str_map, string
from ..ports import HBONE

GATEWAY_GROUP = "gateway.networking.k8s.io"
WAYPOINT_CLASS = "trellis-waypoint"
REPLICAS_ANNOTATION = "trellis.dev/replicas"
OTLP_ENDPOINT_ANNOTATION = "trellis.dev/otlp-endpoint"
TRACE_SAMPLING_ANNOTATION = "trellis.dev/trace-sampling"
HBONE_PORT = HBONE

# Patterns from apis/v1/shared_types.go, verbatim.
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PRECISE_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")  # ms before m
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """GEP-2257 duration ("1h30m", "500ms", "0s") -> seconds. ValueError if malformed."""
    if not DURATION.match(text):
        raise ValueError(f"{text!r} is not a Gateway API duration (like 10s, 500ms, 1m30s)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def duration(v, path: str, problems: Problems):
    """A GEP-2257 duration, kept as seconds (float)."""
    s = string()(v, path, problems)
    if s is None:
        return None
    try:
        return parse_duration(s)
    except ValueError as exc:
        problems.append((path, str(exc)))
        return None


def bounded_string(pattern: re.Pattern | None, what: str, max_len: int, min_len: int = 1):
    """schema.string with the Gateway API's MinLength/MaxLength."""
    pattern_check = string(pattern, what)

    def check(v, path, problems):
        if isinstance(v, str) and not min_len <= len(v) <= max_len:
            problems.append((path, f"must be {min_len}-{max_len} characters long, got {len(v)}"))
            return None
        return pattern_check(v, path, problems)
    return check


hostname = bounded_string(HOSTNAME, "hostname (RFC 1123, optionally *.-prefixed, no IPs)", 253)
precise_hostname = bounded_string(PRECISE_HOSTNAME, "hostname (RFC 1123, no wildcard)", 253)
object_name = bounded_string(re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), "object name", 253)
header_name = bounded_string(HEADER_NAME, "HTTP header name", 256)
section_name = bounded_string(SECTION_NAME, "section name", 253)
namespace_name = bounded_string(NAMESPACE, "namespace", 63)


def unique(items, key, path: str, what: str, problems: Problems) -> None:
    """Kubernetes listType=map: one entry per key; name the second one."""
    seen = set()
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            problems.append((f"{path}[{i}]", f"{what} {k!r} is listed twice"))
        seen.add(k)


def max_items(check, n: int):
    def wrapped(v, path, problems):
        if isinstance(v, list) and len(v) > n:
            problems.append((path, f"at most {n} entries, got {len(v)}"))
            return None
        return check(v, path, problems)
    return wrapped


@dataclass(frozen=True)
class TargetRef:
    """A policy's target (Gateway API LocalPolicyTargetReference; also our AuthorizationPolicy's)."""
    kind: str
    name: str
    group: str = ""


@dataclass(frozen=True)
class ParentRef:
    name: str
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None
    section_name: str | None = None
    port: int | None = None

    @property
    def is_service(self) -> bool:
        return self.group == "" and self.kind == "Service"


parent_ref = obj(ParentRef, {
    "group": F("group", bounded_string(GROUP, "API group", 253, 0), default=GATEWAY_GROUP),
    "kind": F("kind", bounded_string(KIND, "kind", 63), default="Gateway"),
    "namespace": F("namespace", namespace_name),
    "name": F("name", object_name, required=True),
    "sectionName": F("section_name", section_name),
    "port": F("port", port)})


def parent_refs(v, path, problems):
    refs = max_items(list_of(parent_ref), 32)(v, path, problems)
    if refs and None not in refs:
        unique(refs, lambda r: (r.group, r.kind, r.namespace or "", r.name, r.section_name, r.port), path,
               "parentRef (same parent needs a distinct sectionName or port)", problems)
    return refs


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None = None


@dataclass(frozen=True)
class Infrastructure:
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GatewaySpec:
    gateway_class_name: str
    listeners: tuple[Listener, ...] = ()
    infrastructure: Infrastructure = Infrastructure()
    addresses: tuple[str, ...] = ()

    @property
    def is_waypoint(self) -> bool:
        return self.gateway_class_name == WAYPOINT_CLASS


WAYPOINT_LISTENER = Listener(name="mesh", port=HBONE_PORT, protocol="HBONE")

_listener = obj(Listener, {
    "name": F("name", section_name, required=True),
    "hostname": F("hostname", hostname),
    "port": F("port", port, required=True),
    "protocol": F("protocol", enum("HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE"), required=True)})
_infrastructure = obj(Infrastructure, {
    "labels": F("labels", labels, default=dict),
    "annotations": F("annotations", str_map(), default=dict)})
def _address_post(a: dict, path: str, problems: Problems) -> None:
    check = ip_address if a["type"] == "IPAddress" else precise_hostname
    check(a["value"], f"{path}.value", problems)


_address = obj(dict, {"type": F("type", enum("IPAddress", "Hostname"), default="IPAddress"),
                      "value": F("value", bounded_string(None, "address", 253), required=True)}, post=_address_post)


def _gateway_post(spec: GatewaySpec, path: str, problems: Problems) -> None:
    unique(spec.listeners, lambda x: x.name, f"{path}.listeners", "listener name", problems)
    if not spec.is_waypoint:
        return
    hbone = [i for i, x in enumerate(spec.listeners) if x.protocol == "HBONE"]
    if len(hbone) != 1 or len(spec.listeners) != 1:
        problems.append((f"{path}.listeners", f"a {WAYPOINT_CLASS} Gateway has exactly one listener, "
                                              f"protocol HBONE on port {HBONE_PORT} (as Istio's waypoints)"))
    elif spec.listeners[0].port != HBONE_PORT:
        problems.append((f"{path}.listeners[0].port", f"the HBONE listener must be on port {HBONE_PORT}, "
                                                      f"got {spec.listeners[0].port}"))


_gateway_obj = obj(GatewaySpec, {
    "gatewayClassName": F("gateway_class_name", object_name, required=True),
    "listeners": F("listeners", max_items(list_of(_listener), 64), default=tuple),
    "addresses": F("addresses", max_items(list_of(_address), 16), default=tuple),
    "infrastructure": F("infrastructure", _infrastructure, default=Infrastructure)}, post=_gateway_post)

_UNSUPPORTED_GATEWAY = {"allowedListeners", "tls", "defaultScope"}


def gateway_spec(v, path, problems):
    """Listeners may be left out for a waypoint: the HBONE listener is the only one it has."""
    if isinstance(v, dict):
        for k in _UNSUPPORTED_GATEWAY & set(v):
            problems.append((f"{path}.{k}", "is not supported by trellis waypoints"))
        if isinstance(v.get("infrastructure"), dict) and "parametersRef" in v["infrastructure"]:
            problems.append((f"{path}.infrastructure.parametersRef", "is not supported: set replicas with "
                                                                     f"the {REPLICAS_ANNOTATION} annotation"))
            return None
        v = {k: x for k, x in v.items() if k not in _UNSUPPORTED_GATEWAY}
        if v.get("gatewayClassName") == WAYPOINT_CLASS and not v.get("listeners"):
            v = dict(v, listeners=[{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}])
    return _gateway_obj(v, path, problems)


def waypoint_replicas(annotations: dict) -> int:
    """Replicas from the Gateway's annotation (checked by `check_annotations`)."""
    return int(annotations.get(REPLICAS_ANNOTATION, "1"))


_replicas = integer(1, 16, "a replica count")


def check_annotations(meta: dict, problems: Problems) -> None:
    """The metadata check of the Gateway kind: replicas, and the tracing settings."""
    annotations = meta.get("annotations") or {}
    _check_replicas(annotations.get(REPLICAS_ANNOTATION), problems)
    url = annotations.get(OTLP_ENDPOINT_ANNOTATION)
    if url is not None and url.strip() != "none":
        parts = urlsplit(url.strip())
        try:
            parts.port
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            problems.append((f"metadata.annotations.{OTLP_ENDPOINT_ANNOTATION}",
                             f"must be an OTLP/HTTP URL (http:// or https://, e.g. http://otel-collector.obs:4318) "
                             f"or none, got {url!r}"))
    pct = annotations.get(TRACE_SAMPLING_ANNOTATION)
    if pct is not None:
        try:
            ok = 0 <= float(pct) <= 100
        except ValueError:
            ok = False
        if not ok:
            problems.append((f"metadata.annotations.{TRACE_SAMPLING_ANNOTATION}",
                             f"must be a percentage 0-100 (a quoted number), got {pct!r}"))


def _check_replicas(raw: str | None, problems: Problems) -> None:
    if raw is None:
        return
    path = f"metadata.annotations.{REPLICAS_ANNOTATION}"
    if not raw.isdigit():
        problems.append((path, f"must be a replica count 1-16 (a quoted integer), got {raw!r}"))
    else:
        _replicas(int(raw), path, problems)
