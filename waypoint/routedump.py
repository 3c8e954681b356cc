"""The waypoint's admin `/routes` (pure): one row per rule of every route attached to each
Service port the waypoint fronts, in the shape `trellis routes` reads (docs/internals.md,
"Lab layout", `trellis routes`): parent, route, rule, matches, backends with weights,
timeouts and retry as Gateway API durations, and the policies in force. A Service port with
no route gets one row whose backend is the Service itself (unrouted traffic goes there)."""
from __future__ import annotations

from meshcore.resources.routes import Retry, Timeouts


def format_duration(seconds: float) -> str:
    """Seconds as a GEP-2257 duration, the form a user writes: 1.5 -> "1s500ms", 0 -> "0s"."""
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def _values(matches) -> list[dict]:
    return [{"name": v.name, "type": v.type, "value": v.value} for v in matches]


def match_dump(m, grpc: bool) -> dict:
    if grpc:
        out: dict = {"headers": _values(m.headers)}
        if m.method is not None:
            out["method"] = {k: v for k, v in (("type", m.method.type), ("service", m.method.service),
                                               ("method", m.method.method)) if v is not None}
        return out
    out = {"path": {"type": m.path.type, "value": m.path.value}, "headers": _values(m.headers),
           "queryParams": _values(m.query_params)}
    if m.method is not None:
        out["method"] = m.method
    return out


def timeouts_dump(t: Timeouts | None) -> dict:
    if t is None:
        return {}
    return {k: format_duration(v) for k, v in (("request", t.request), ("backendRequest", t.backend_request))
            if v is not None}


def retry_dump(r: Retry | None) -> dict | None:
    if r is None:
        return None
    out: dict = {"codes": list(r.codes)}
    if r.attempts is not None:
        out["attempts"] = r.attempts
    if r.backoff is not None:
        out["backoff"] = format_duration(r.backoff)
    return out


def policy_refs(namespace: str, **kinds: list[str]) -> list[str]:
    """"Kind/name" for each "ns/name" of each kind; "Kind/ns/name" when from another namespace
    (root-namespace AuthorizationPolicies for the GatewayClass)."""
    out = []
    for kind, keys in kinds.items():
        for key in keys:
            ns, _, name = key.partition("/")
            out.append(f"{kind}/{name}" if ns == namespace else f"{kind}/{key}")
    return out


def route_rows(service: str, port: int, route, policies: list[str]) -> list[dict]:
    """One row per rule of `route` (a routing table entry) attached to Service "ns/name" `port`."""
    r = route
    return [{"parent": f"{service}:{port}", "route": f"{r.ref.namespace}/{r.ref.name}", "kind": r.ref.kind,
             "rule": i, "matches": [match_dump(m, r.grpc) for m in rule.matches],
             "backends": [{"name": b.name, "namespace": b.namespace or r.ref.namespace, "port": b.port,
                           "weight": b.weight} for b in rule.backend_refs],
             "timeouts": timeouts_dump(getattr(rule, "timeouts", None)),
             "retry": retry_dump(getattr(rule, "retry", None)), "policies": policies}
            for i, rule in enumerate(r.spec.rules)]


def unrouted_row(service: str, port: int, policies: list[str]) -> dict:
    """A port without routes: its traffic goes to the Service itself."""
    ns, _, name = service.partition("/")
    return {"parent": f"{service}:{port}", "route": None, "kind": None, "rule": None, "matches": [],
            "backends": [{"name": name, "namespace": ns, "port": port, "weight": 1}],
            "timeouts": {}, "retry": None, "policies": policies}
