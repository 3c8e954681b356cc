"""The routes in the waypoint's admin `/routes` (pure): each attached route with its rules as
they apply (matches, backends with weights, timeouts and retry as a user writes them), the
part of the per-Service entries that `trellis routes` turns into one row per rule
(docs/internals.md, "Lab layout")."""
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


def route_dump(route, consumers: str | None = None) -> dict:
    """One attached route (a routing table entry) and its rules, as they apply; `consumers`:
    the namespace whose callers it applies to (a consumer route), None for every caller."""
    r = route
    out = {"route": str(r.ref), "consumers": consumers, "rules": [
        {"rule": i, **({"name": rule.name} if getattr(rule, "name", None) else {}), "matches": [match_dump(m, r.grpc) for m in rule.matches],
         "backends": [{"service": f"{b.namespace or r.ref.namespace}/{b.name}", "name": b.name,
                       "namespace": b.namespace or r.ref.namespace, "port": b.port, "weight": b.weight}
                      for b in rule.backend_refs],
         "timeouts": timeouts_dump(getattr(rule, "timeouts", None)), "retry": retry_dump(getattr(rule, "retry", None))}
        for i, rule in enumerate(r.spec.rules)]}
    return out


def service_routes(table, namespace: str, name: str, port: int) -> list[dict]:
    """The routes of Service namespace/name:port (a RouteTable's): the producer routes, for
    every caller without routes of its own, then each namespace's consumer routes (GAMMA), so
    that `/routes` shows every route the waypoint may apply to that port."""
    out = [route_dump(r) for r in table.attached(namespace, name, port, namespace)]
    for ns in table.consumer_namespaces(namespace, name, port):
        out += [route_dump(r, ns) for r in table.attached(namespace, name, port, ns)]
    return out
