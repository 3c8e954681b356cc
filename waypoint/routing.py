"""Route selection for a request to a mesh Service (pure): Gateway API HTTPRoute and GRPCRoute
with GAMMA semantics (a `Service` parentRef; GEP-1426 and GEP-1294).

Attachment: a route attaches to Service ns/name when a parentRef has group "" kind Service,
that name, that namespace (default: the route's), no port or the port dialled, and no
sectionName or the name of the port dialled (the spec: sectionName is a Service's port name). A route in
the Service's namespace is a *producer* route and applies to every caller; a route in another
namespace is a *consumer* route and applies only to callers in its own namespace, which then
use their consumer routes instead of the producer routes. `hostnames` are ignored, as GAMMA
asks. No route attached for that port: the request goes to the Service itself ("default").

Precedence (HTTPRoute, across every rule of every attached route): Exact path, then the
longest PathPrefix, then RegularExpression (implementation-specific; Istio's order, the
longer expression first),
then a method match, then the most header matches, then the most query matches; ties go to
the oldest route (creationTimestamp), then "{namespace}/{name}" alphabetically, then rule
order. GRPCRoute: the longest matching service, then method, then the most header matches,
then the same tie-breaks. Requests with a gRPC content-type use the GRPCRoutes when any
attach (Istio merges both kinds the same way); other requests only ever use HTTPRoutes.
Routes attached but none matches: 404, as the spec and GAMMA conformance require.

Backends: weighted (weight/sum); weight 0 is never chosen; all weights 0, no backendRefs, a
backend of another kind than Service, a Service that does not exist (or lacks the port) or
one not open to the route (its ReferenceGrant rule) gives 500 for its share; the reason is
meshcore.resources.grants.backend_problem's, which the control plane's status shares.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Iterable, Mapping
from urllib.parse import unquote

from meshcore.resources import Resource
from meshcore.resources.filters import HeaderModifier
from meshcore.resources.grants import backend_problem
from meshcore.resources.routes import BackendRef, Retry, RouteFilter, Timeouts

from . import rewrite
from .http.events import Request

FOREVER = "\uffff"  # a route without creationTimestamp counts as the newest (file configs have none)


@dataclass(frozen=True)
class RouteRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Backend:
    namespace: str
    name: str
    port: int


@dataclass(frozen=True)
class Decision:
    """What to do with a request. action: "forward" (to `backend`), "default" (no route is
    attached: to the Service dialled), "redirect" (answer `status` with `location`) or
    "respond" (answer `status`, e.g. 404 or 500, with `reason` as the body)."""
    action: str
    request: Request
    status: int = 0
    reason: str = ""
    backend: Backend | None = None
    location: str | None = None
    response_headers: tuple[HeaderModifier, ...] = ()
    route: RouteRef | None = None
    rule: int | None = None
    timeouts: Timeouts | None = None
    retry: Retry | None = None


@dataclass(frozen=True)
class _Route:
    ref: RouteRef
    created: str
    spec: object
    grpc: bool


@dataclass(frozen=True, order=True)
class _Entry:
    key: tuple
    route: _Route = field(compare=False)
    rule_index: int = field(compare=False)
    match: object = field(compare=False)


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _full(pattern: str, value: str) -> bool:
    return _regex(pattern).fullmatch(value) is not None


def _value_ok(kind: str, expected: str, actual: str | None) -> bool:
    if actual is None:
        return False
    return actual == expected if kind == "Exact" else _full(expected, actual)


def _first_by_name(matches, fold: bool):
    """"If multiple entries specify equivalent names, only the first ... MUST be considered."""
    seen, out = set(), []
    for m in matches:
        k = m.name.lower() if fold else m.name
        if k not in seen:
            seen.add(k)
            out.append(m)
    return out


def prefix_matches(prefix: str, path: str) -> bool:
    """Element-wise: /abc matches /abc, /abc/ and /abc/def but not /abcd; a trailing / is ignored."""
    p = prefix.rstrip("/")
    return p == "" or path == p or path.startswith(p + "/")


def _path_ok(m, path: str) -> bool:
    if m.type == "Exact":
        return path == m.value
    if m.type == "PathPrefix":
        return prefix_matches(m.value, path)
    return _full(m.value, path)


class _View:
    """One request's facts, computed once for all the matches tried (and only those a match
    looks at: a route matching on the path alone never builds the header or query maps)."""

    def __init__(self, req: Request):
        self.req = req
        self.path = req.path

    @cached_property
    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for k, v in self.req.headers:
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        return headers

    @cached_property
    def query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        q = self.req.query
        for part in q.split("&") if q else ():
            name, _, value = part.partition("=")
            query.setdefault(unquote(name), unquote(value))  # the first value, as the spec recommends
        return query

    @property
    def grpc_service(self) -> str:
        return self.path[1:].partition("/")[0]

    @property
    def grpc_method(self) -> str:
        return self.path[1:].partition("/")[2]

    def headers_ok(self, matches) -> bool:
        return all(_value_ok(m.type, m.value, self.headers.get(m.name.lower())) for m in _first_by_name(matches, True))


def _http_ok(m, v: _View) -> bool:
    return (_path_ok(m.path, v.path) and (m.method is None or m.method == v.req.method)
            and (not m.headers or v.headers_ok(m.headers))
            and (not m.query_params or
                 all(_value_ok(q.type, q.value, v.query.get(q.name)) for q in _first_by_name(m.query_params, False))))


def _grpc_ok(m, v: _View) -> bool:
    mm = m.method
    if mm is not None:
        for want, got in ((mm.service, v.grpc_service), (mm.method, v.grpc_method)):
            if want is not None and not _value_ok(mm.type, want, got):
                return False
    return v.headers_ok(m.headers)


def _http_key(m) -> tuple:
    rank = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}[m.path.type]
    length = len(m.path.value)   # Istio's getURILength: the longer prefix (or regex) first
    return (rank, -length, m.method is None, -len(_first_by_name(m.headers, True)),
            -len(_first_by_name(m.query_params, False)))


def _grpc_key(m) -> tuple:
    if m is None:                 # no matches: matches every request, ranked last
        return (0, 0, True, 0)
    mm = m.method
    exact = mm is not None and mm.type == "Exact"
    return (-(len(mm.service or "") if exact else 0), -(len(mm.method or "") if exact else 0),
            mm is None or mm.type != "Exact", -len(_first_by_name(m.headers, True)))


class RouteTable:
    """Every HTTPRoute and GRPCRoute, indexed by the Service they attach to.

    `services` maps (namespace, name) to the Service's ports ({port: port name}, or just the
    port numbers); a backendRef outside it is invalid."""

    def __init__(self, resources: Iterable[Resource], services: Mapping[tuple[str, str], Iterable[int]]):
        self.services = {k: dict(v) if isinstance(v, Mapping) else {p: "" for p in v} for k, v in services.items()}
        self.routes: list[_Route] = []
        self.grants: list[Resource] = []
        for r in resources:
            if r.kind == "ReferenceGrant":
                self.grants.append(r)
            elif r.kind in ("HTTPRoute", "GRPCRoute"):
                created = ((r.raw.get("metadata") or {}).get("creationTimestamp")) or FOREVER
                self.routes.append(_Route(RouteRef(r.kind, r.namespace, r.name), str(created), r.spec,
                                          r.kind == "GRPCRoute"))
        self._cache: dict[tuple, tuple[list[_Entry], list[_Entry]]] = {}
        self._plans: dict[int, tuple] = {}   # id(entry) -> _plan(entry); entries live as long as _cache

    def _found(self, namespace: str, name: str, port: int) -> list[_Route]:
        """Every route with a parentRef to Service namespace/name:port, producer or consumer."""
        found = []
        port_name = self.services.get((namespace, name), {}).get(port, "")
        for route in self.routes:
            for p in route.spec.parent_refs:
                if (p.is_service and p.name == name and (p.namespace or route.ref.namespace) == namespace
                        and p.port in (None, port) and p.section_name in (None, port_name)):
                    found.append(route)
                    break
        return found

    def attached(self, namespace: str, name: str, port: int, client_namespace: str) -> list[_Route]:
        """The routes that apply to this caller of Service namespace/name:port (GAMMA)."""
        found = self._found(namespace, name, port)
        consumer = [r for r in found if r.ref.namespace != namespace and r.ref.namespace == client_namespace]
        return consumer or [r for r in found if r.ref.namespace == namespace]

    def consumer_namespaces(self, namespace: str, name: str, port: int) -> list[str]:
        """The namespaces whose callers of Service namespace/name:port have consumer routes."""
        return sorted({r.ref.namespace for r in self._found(namespace, name, port) if r.ref.namespace != namespace})

    def _entries(self, namespace: str, name: str, port: int, client_namespace: str):
        key = (namespace, name, port, client_namespace)
        if key not in self._cache:
            groups: tuple[list[_Entry], list[_Entry]] = ([], [])
            for route in self.attached(*key):
                tie = (route.created, f"{route.ref.namespace}/{route.ref.name}")
                for i, rule in enumerate(route.spec.rules):
                    matches = rule.matches or (None,)
                    for m in matches:
                        k = (_grpc_key(m) if route.grpc else _http_key(m)) + tie + (i,)
                        groups[route.grpc].append(_Entry(k, route, i, m))
            self._cache[key] = (sorted(groups[0]), sorted(groups[1]))
        return self._cache[key]

    def decide(self, req: Request, namespace: str, name: str, port: int, client_namespace: str,
               pick: Callable[[], float] = random.random) -> Decision:
        http, grpc = self._entries(namespace, name, port, client_namespace)
        entries = grpc if (grpc and req.is_grpc) else http   # no GRPCRoute: no content-type scan
        if not entries:
            return Decision("default", req)
        view = _View(req)
        for e in entries:
            if e.match is None or (_grpc_ok(e.match, view) if e.route.grpc else _http_ok(e.match, view)):
                return self._apply(req, e, port, pick, (namespace, name))
        return Decision("respond", req, 404, f"no route of Service {namespace}/{name} matches "
                                             f"{req.method} {req.path}")

    def _apply(self, req: Request, e: _Entry, port: int, pick, parent: tuple[str, str]) -> Decision:
        rule, prefix, common, targets = self._plan(e, parent)
        if rule.filters:
            req, response_mods = _run_filters(req, rule.filters, prefix)
            redirect = _redirect(req, rule.filters, prefix, port, response_mods, common)
            if redirect is not None:
                return redirect
        else:
            response_mods = ()
        chosen = choose_backend(rule.backend_refs, pick)
        if chosen is None:
            why = "has no backendRefs" if not rule.backend_refs else "gives every backendRef weight 0"
            return Decision("respond", req, 500, f"{e.route.ref} rule {e.rule_index} {why}", **common)
        backend, refused = targets[id(chosen)]
        if refused:
            return Decision("respond", req, 500, refused, **common)
        if chosen.filters:   # the backendRef's own (implementation-specific in the spec; all four here)
            req, more = _run_filters(req, chosen.filters, prefix)
            response_mods += more
            redirect = _redirect(req, chosen.filters, prefix, port, response_mods, common)
            if redirect is not None:
                return redirect
        return Decision("forward", req, backend=backend, response_headers=response_mods, **common)

    def _plan(self, e: _Entry, parent: tuple[str, str]) -> tuple:
        """What `_apply` needs of an entry that does not depend on the request, worked out
        once per snapshot (an entry belongs to one parent Service): its rule, the prefix a
        rewrite replaces, the Decision's common fields and, per backendRef, the Backend and
        the 500 answer's reason when it cannot be used ("" when it can), checked in this order:
        its kind, its ReferenceGrant, the Service and its port."""
        plan = self._plans.get(id(e))
        if plan is None:
            rule = e.route.spec.rules[e.rule_index]
            prefix = e.match.path.value if (e.match is not None and not e.route.grpc
                                            and e.match.path.type == "PathPrefix") else None
            common = dict(route=e.route.ref, rule=e.rule_index, timeouts=getattr(rule, "timeouts", None),
                          retry=getattr(rule, "retry", None))
            targets = {id(ref): self._target(e.route.ref, ref, parent) for ref in rule.backend_refs}
            plan = self._plans[id(e)] = (rule, prefix, common, targets)
        return plan

    def _target(self, route: RouteRef, ref: BackendRef, parent: tuple[str, str]) -> tuple[Backend | None, str]:
        backend = Backend(ref.namespace or route.namespace, ref.name, ref.port)
        ports = self.services.get((backend.namespace, backend.name))
        reason = backend_problem(self.grants, route.kind, route.namespace, ref.group, ref.kind, backend.namespace,
                                 backend.name, backend.port, ports, parent)
        where = f"backend Service {backend.namespace}/{backend.name}"
        if reason == "InvalidKind":
            return None, f"backendRef {ref.name} of {route}: kind {ref.group or 'core'}/{ref.kind} is not supported"
        if reason == "RefNotPermitted":
            return backend, f"{where} is not open to {route} (no ReferenceGrant)"
        if reason == "BackendNotFound":
            missing = "does not exist" if ports is None else f"has no port {backend.port}"
            return backend, f"{where} {missing} ({route})"
        return backend, ""


def _redirect(req: Request, filters: tuple[RouteFilter, ...], prefix: str | None, port: int,
              response_mods: tuple, common: dict) -> Decision | None:
    """The answer of a RequestRedirect among `filters` (after the request-side ones ran), if any."""
    for f in filters:
        if f.request_redirect is not None:
            loc = rewrite.redirect_location(req, f.request_redirect, prefix, port)
            return Decision("redirect", req, f.request_redirect.status_code, location=loc,
                            response_headers=response_mods, **common)
    return None


def _run_filters(req: Request, filters: tuple[RouteFilter, ...], prefix: str | None):
    """Request-side filters in the order listed; response header modifiers are returned."""
    response = []
    for f in filters:
        if f.request_header_modifier is not None:
            req = req.with_(headers=rewrite.modify_headers(req.headers, f.request_header_modifier))
        elif f.url_rewrite is not None:
            req = rewrite.rewrite(req, f.url_rewrite, prefix)
        elif f.response_header_modifier is not None:
            response.append(f.response_header_modifier)
    return req, tuple(response)


def choose_backend(refs: tuple[BackendRef, ...], pick: Callable[[], float] = random.random) -> BackendRef | None:
    """weight/sum(weights); weight 0 never; None when no weight is positive."""
    total = sum(b.weight for b in refs)
    if total <= 0:
        return None
    x = pick() * total
    for b in refs:
        if b.weight and x < b.weight:
            return b
        x -= b.weight
    return [b for b in refs if b.weight][-1]


def apply_response_headers(headers, mods: tuple[HeaderModifier, ...]):
    for m in mods:
        headers = rewrite.modify_headers(headers, m)
    return headers
