"""Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io/v1), typed and validated
as apis/v1/httproute_types.go and grpcroute_types.go specify (enums, defaults, limits and the
CEL rules), with the spec's own messages where it has one.

Supported filters: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite
(GRPCRoute: the two header modifiers). RequestMirror, ExtensionRef, CORS and ExternalAuth are
refused as unsupported (the spec lets an implementation reject what it cannot do).
Backend-level filters: the same four (the spec leaves them implementation-specific; the
conformance suite's HTTPRouteBackendRequestRedirect and HTTPRouteBackendURLRewrite use the
last two).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .filters import (HeaderModifier, PathModifier, RequestRedirect, URLRewrite, filter_list,
                      header_modifier, request_redirect, url_rewrite)
from .gateway import (Problems, bounded_string, duration, header_name, hostname, max_items, namespace_name,
                      object_name, parent_refs, section_name, unique)
from .schema import F, enum, integer, list_of, obj, port, string

PATH_VALUE = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")
GRPC_SERVICE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


@dataclass(frozen=True)
class PathMatch:
    type: str = "PathPrefix"
    value: str = "/"


@dataclass(frozen=True)
class ValueMatch:
    """A header or query-parameter match (type Exact or RegularExpression)."""
    name: str
    value: str
    type: str = "Exact"


@dataclass(frozen=True)
class HTTPRouteMatch:
    path: PathMatch = PathMatch()
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class RouteFilter:
    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None


@dataclass(frozen=True)
class BackendRef:
    name: str
    port: int | None = None
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None
    weight: int = 1
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    request: float | None = None          # seconds; 0 disables
    backend_request: float | None = None


@dataclass(frozen=True)
class Retry:
    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff: float | None = None          # seconds


@dataclass(frozen=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    name: str | None = None


@dataclass(frozen=True)
class HTTPRouteSpec:
    parent_refs: tuple = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)


@dataclass(frozen=True)
class GRPCMethodMatch:
    type: str = "Exact"
    service: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = ()
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None


@dataclass(frozen=True)
class GRPCRouteSpec:
    parent_refs: tuple = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = (GRPCRouteRule(),)


def _regex(v, path, problems):
    try:
        re.compile(v)
    except re.error as exc:
        problems.append((path, f"{v!r} is not a valid regular expression: {exc}"))


def _path_post(m: PathMatch, path: str, problems: Problems) -> None:
    if m.type == "RegularExpression":
        return _regex(m.value, f"{path}.value", problems)
    scope = "when type one of ['Exact', 'PathPrefix']"
    v, where = m.value, f"{path}.value"
    if not v.startswith("/"):
        problems.append((where, f"value must be an absolute path and start with '/' {scope}"))
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in v:
            problems.append((where, f"must not contain '{bad}' {scope}"))
    for bad in ("/..", "/."):
        if v.endswith(bad):
            problems.append((where, f"must not end with '{bad}' {scope}"))
    if not PATH_VALUE.match(v):
        problems.append((where, f"must only contain valid characters (matching {PATH_VALUE.pattern}) {scope}"))


_path_match = obj(PathMatch, {"type": F("type", enum("Exact", "PathPrefix", "RegularExpression"), default="PathPrefix"),
                              "value": F("value", bounded_string(None, "path", 1024), default="/")}, post=_path_post)


def _value_match(max_len: int):
    def post(m, path, problems):
        if m.type == "RegularExpression":
            _regex(m.value, f"{path}.value", problems)
    return obj(ValueMatch, {"type": F("type", enum("Exact", "RegularExpression"), default="Exact"),
                            "name": F("name", header_name, required=True),
                            "value": F("value", bounded_string(None, "value", max_len), required=True)}, post=post)


def _named_list(item, what: str, n: int = 16):
    def check(v, path, problems):
        out = max_items(list_of(item), n)(v, path, problems)
        if out and None not in out:
            unique(out, lambda x: x.name, path, what, problems)
        return out
    return check


_headers = _named_list(_value_match(4096), "header")
_http_match = obj(HTTPRouteMatch, {
    "path": F("path", _path_match, default=PathMatch),
    "headers": F("headers", _headers, default=tuple),
    "queryParams": F("query_params", _named_list(_value_match(1024), "query param"), default=tuple),
    "method": F("method", enum(*METHODS))})

_HEADER_FILTERS = {"RequestHeaderModifier": ("requestHeaderModifier", "request_header_modifier", header_modifier),
                   "ResponseHeaderModifier": ("responseHeaderModifier", "response_header_modifier", header_modifier)}
_HTTP_FILTERS = dict(_HEADER_FILTERS,
                     RequestRedirect=("requestRedirect", "request_redirect", request_redirect),
                     URLRewrite=("urlRewrite", "url_rewrite", url_rewrite))
_HTTP_UNSUPPORTED = ("RequestMirror", "ExtensionRef", "CORS", "ExternalAuth")


def _backend_post(b: BackendRef, path: str, problems: Problems) -> None:
    """Only Services are backends here; another kind is not refused at load time but makes the
    route's ResolvedRefs False/InvalidKind and its share of requests 500, as the spec asks."""
    if b.group == "" and b.kind == "Service" and b.port is None:
        problems.append((f"{path}.port", "Must have port for Service reference"))


def _backend_ref(filters):
    return obj(BackendRef, {
        "group": F("group", string(), default=""),
        "kind": F("kind", string(), default="Service"),
        "name": F("name", object_name, required=True),
        "namespace": F("namespace", namespace_name),
        "port": F("port", port),
        "weight": F("weight", integer(0, 1_000_000, "a weight"), default=1),
        "filters": F("filters", filters, default=tuple)}, post=_backend_post)


_backend_filters = filter_list(RouteFilter, _HTTP_FILTERS, _HTTP_UNSUPPORTED)
_http_filters = filter_list(RouteFilter, _HTTP_FILTERS, _HTTP_UNSUPPORTED)
_grpc_filters = filter_list(RouteFilter, _HEADER_FILTERS, ("RequestMirror", "ExtensionRef"))


def _timeouts_post(t: Timeouts, path: str, problems: Problems) -> None:
    if t.request is not None and t.backend_request is not None and t.request != 0 and t.backend_request > t.request:
        problems.append((path, "backendRequest timeout cannot be longer than request timeout"))


_timeouts = obj(Timeouts, {"request": F("request", duration), "backendRequest": F("backend_request", duration)},
                post=_timeouts_post)
_retry = obj(Retry, {"codes": F("codes", list_of(integer(400, 599, "an HTTP status code")), default=tuple),
                     "attempts": F("attempts", integer(1, 1000, "an attempt count")),
                     "backoff": F("backoff", duration)})


def _prefix_rule_check(rule: HTTPRouteRule, path: str, problems: Problems) -> None:
    """The CEL rules tying filters to matches and backends."""
    prefix_filters = [f for f in rule.filters
                      if ((f.request_redirect and f.request_redirect.path) or (f.url_rewrite and f.url_rewrite.path))
                      and (f.request_redirect or f.url_rewrite).path.type == "ReplacePrefixMatch"]
    for f in prefix_filters:
        if len(rule.matches) != 1 or rule.matches[0].path.type != "PathPrefix":
            which = "RequestRedirect" if f.request_redirect else "URLRewrite"
            problems.append((path, f"When using {which} filter with path.replacePrefixMatch, "
                                   "exactly one PathPrefix match must be specified"))
    if rule.backend_refs and any(f.request_redirect for f in rule.filters):
        problems.append((path, "RequestRedirect filter must not be used together with backendRefs"))


def _http_matches(v, path, problems):
    """An empty list means what no list means: PathPrefix "/" (the CRD default)."""
    out = max_items(list_of(_http_match), 64)(v, path, problems)
    return out or (None if out is None else (HTTPRouteMatch(),))


_http_rule = obj(HTTPRouteRule, {
    "name": F("name", section_name),
    "matches": F("matches", _http_matches, default=lambda: (HTTPRouteMatch(),)),
    "filters": F("filters", _http_filters, default=tuple),
    "backendRefs": F("backend_refs", max_items(list_of(_backend_ref(_backend_filters)), 16), default=tuple),
    "timeouts": F("timeouts", _timeouts),
    "retry": F("retry", _retry)}, post=_prefix_rule_check)


def _rules(rule, default):
    def check(v, path, problems):
        rules = max_items(list_of(rule), 16)(v, path, problems)
        if rules is None:
            return None
        if not rules:
            return (default,)
        if None not in rules:
            unique([r for r in rules if r.name], lambda r: r.name, path, "rule name", problems)
            total = sum(len(r.matches) for r in rules)
            if total > 128:
                problems.append((path, "While 16 rules and 64 matches per rule are allowed, the total number "
                                       f"of matches across all rules in a route must be less than 128, got {total}"))
        return rules
    return check


_common = {"parentRefs": F("parent_refs", parent_refs, default=tuple),
           "hostnames": F("hostnames", max_items(list_of(hostname), 16), default=tuple)}
http_route_spec = obj(HTTPRouteSpec, dict(_common, rules=F("rules", _rules(_http_rule, HTTPRouteRule()),
                                                         default=lambda: (HTTPRouteRule(),))))


def _grpc_method_post(m: GRPCMethodMatch, path: str, problems: Problems) -> None:
    if m.service is None and m.method is None:
        problems.append((path, "One or both of 'service' or 'method' must be specified"))
    for attr, pattern in (("service", GRPC_SERVICE), ("method", GRPC_METHOD)):
        value = getattr(m, attr)
        if value is None:
            continue
        if m.type == "RegularExpression":
            _regex(value, f"{path}.{attr}", problems)
        elif not pattern.match(value):
            problems.append((f"{path}.{attr}", f"{attr} must only contain valid characters (matching "
                                               f"{pattern.pattern})"))


_grpc_method = obj(GRPCMethodMatch, {
    "type": F("type", enum("Exact", "RegularExpression"), default="Exact"),
    "service": F("service", bounded_string(None, "service", 1024)),
    "method": F("method", bounded_string(None, "method", 1024))}, post=_grpc_method_post)
_grpc_match = obj(GRPCRouteMatch, {"method": F("method", _grpc_method), "headers": F("headers", _headers, default=tuple)})
_grpc_rule = obj(GRPCRouteRule, {
    "name": F("name", section_name),
    "matches": F("matches", max_items(list_of(_grpc_match), 64), default=tuple),
    "filters": F("filters", _grpc_filters, default=tuple),
    "backendRefs": F("backend_refs", max_items(list_of(_backend_ref(_grpc_filters)), 16), default=tuple)})
grpc_route_spec = obj(GRPCRouteSpec, dict(_common, rules=F("rules", _rules(_grpc_rule, GRPCRouteRule()),
                                                         default=lambda: (GRPCRouteRule(),))))

__all__ = ["BackendRef", "GRPCMethodMatch", "GRPCRouteMatch", "GRPCRouteRule", "GRPCRouteSpec", "HTTPRouteMatch",
           "HTTPRouteRule", "HTTPRouteSpec", "HeaderModifier", "PathMatch", "PathModifier", "RequestRedirect",
           "Retry", "RouteFilter", "Timeouts", "URLRewrite", "ValueMatch", "grpc_route_spec", "http_route_spec"]
