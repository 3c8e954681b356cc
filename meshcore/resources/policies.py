"""trellis.dev/v1alpha1 `TrafficPolicy` and `RateLimitPolicy`, the waypoint's own policy
kinds (Gateway API policy attachment: `targetRefs`).

TrafficPolicy mirrors Istio's DestinationRule trafficPolicy with flat names:
  loadBalancer.simple            <- trafficPolicy.loadBalancer.simple (ROUND_ROBIN, LEAST_REQUEST)
  connectionPool.maxConnections  <- connectionPool.tcp.maxConnections
  connectionPool.maxPendingRequests <- connectionPool.http.http1MaxPendingRequests
  connectionPool.maxRequests     <- connectionPool.http.http2MaxRequests
  outlierDetection.*             <- outlierDetection.* (same names; Envoy's defaults 5, 10s, 30s, 10%)
  retryBudget {percent 20, minRetriesPerSecond 3, ttl 10s}: on by default, Envoy's numbers.
RateLimitPolicy is a local token bucket per waypoint replica (Envoy's local_ratelimit):
  requestsPerUnit per unit (Second, Minute, Hour), burst = bucket size (default requestsPerUnit),
  key None (one bucket per target) or SourcePrincipal (one per caller), per-principal overrides.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..identity import SpiffeId
from .gateway import GATEWAY_GROUP, TargetRef, Problems, duration, max_items, object_name, unique
from .schema import F, enum, integer, list_of, obj, string

UNIT_SECONDS = {"Second": 1, "Minute": 60, "Hour": 3600}
UNLIMITED = None


@dataclass(frozen=True)
class RetryBudget:
    percent: float = 20.0
    min_retries_per_second: int = 3
    ttl: float = 10.0


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int | None = UNLIMITED
    max_pending_requests: int | None = UNLIMITED
    max_requests: int | None = UNLIMITED


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0       # 502/503/504 and connect failures; 0 = off
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class TrafficPolicySpec:
    target_refs: tuple[TargetRef, ...]
    retry_budget: RetryBudget = RetryBudget()
    load_balancer: str = "ROUND_ROBIN"
    connection_pool: ConnectionPool = ConnectionPool()
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True)
class RateLimit:
    requests_per_unit: int
    unit: str = "Second"
    burst: int | None = None          # bucket size; None = requests_per_unit

    @property
    def window(self) -> int:
        return UNIT_SECONDS[self.unit]

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.requests_per_unit

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.requests_per_unit / self.window


@dataclass(frozen=True)
class RateLimitOverride:
    principal: str
    limit: RateLimit


@dataclass(frozen=True)
class RateLimitPolicySpec:
    target_refs: tuple[TargetRef, ...]
    limit: RateLimit
    key: str = "None"
    overrides: tuple[RateLimitOverride, ...] = field(default_factory=tuple)


def _target_ref(kinds: dict[str, str]):
    def post(t: TargetRef, path: str, problems: Problems) -> None:
        if t.kind not in kinds:
            problems.append((f"{path}.kind", f"must be one of {', '.join(kinds)}, got {t.kind!r}"))
        elif t.group != kinds[t.kind]:
            problems.append((f"{path}.group", f"a {t.kind} is in group {kinds[t.kind]!r}, got {t.group!r}"))
    return obj(TargetRef, {"group": F("group", string(), default=""),
                                 "kind": F("kind", string(), required=True),
                                 "name": F("name", object_name, required=True)}, post=post)


def _target_refs(kinds: dict[str, str]):
    def check(v, path, problems):
        refs = max_items(list_of(_target_ref(kinds)), 16)(v, path, problems)
        if refs is not None and not refs:
            problems.append((path, "must name at least one target"))
        elif refs and None not in refs:
            unique(refs, lambda r: (r.group, r.kind, r.name), path, "targetRef", problems)
        return refs
    return check


def _percent(v, path, problems):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        problems.append((path, f"must be a percentage 0-100, got {v!r}"))
        return None
    return float(v)


def _positive_duration(v, path, problems):
    d = duration(v, path, problems)
    if d is not None and d <= 0:
        problems.append((path, "must be longer than 0s"))
        return None
    return d


_count = integer(1, 2**31 - 1, "a count")
_retry_budget = obj(RetryBudget, {"percent": F("percent", _percent, default=20.0),
                                  "minRetriesPerSecond": F("min_retries_per_second", integer(0, 2**31 - 1, "a rate"),
                                                           default=3),
                                  "ttl": F("ttl", _positive_duration, default=10.0)})
_connection_pool = obj(ConnectionPool, {"maxConnections": F("max_connections", _count),
                                        "maxPendingRequests": F("max_pending_requests", _count),
                                        "maxRequests": F("max_requests", _count)})
_outlier = obj(OutlierDetection, {
    "consecutive5xxErrors": F("consecutive_5xx_errors", integer(0, 2**31 - 1, "a count"), default=5),
    "consecutiveGatewayErrors": F("consecutive_gateway_errors", integer(0, 2**31 - 1, "a count"), default=0),
    "interval": F("interval", _positive_duration, default=10.0),
    "baseEjectionTime": F("base_ejection_time", _positive_duration, default=30.0),
    "maxEjectionPercent": F("max_ejection_percent", integer(0, 100, "a percentage"), default=10)})
_lb = obj(dict, {"simple": F("simple", enum("ROUND_ROBIN", "LEAST_REQUEST"), required=True)})


def _load_balancer(v, path, problems):
    out = _lb(v, path, problems)
    return None if out is None else out["simple"]


traffic_policy_spec = obj(TrafficPolicySpec, {
    "targetRefs": F("target_refs", _target_refs({"Service": ""}), required=True),
    "retryBudget": F("retry_budget", _retry_budget, default=RetryBudget),
    "loadBalancer": F("load_balancer", _load_balancer, default="ROUND_ROBIN"),
    "connectionPool": F("connection_pool", _connection_pool, default=ConnectionPool),
    "outlierDetection": F("outlier_detection", _outlier)})


def _limit_post(r: RateLimit, path: str, problems: Problems) -> None:
    if r.burst is not None and r.burst < 1:
        problems.append((f"{path}.burst", "must be at least 1"))


_limit_fields = {"requestsPerUnit": F("requests_per_unit", _count, required=True),
                 "unit": F("unit", enum(*UNIT_SECONDS), default="Second"),
                 "burst": F("burst", _count)}
_limit = obj(RateLimit, _limit_fields, post=_limit_post)


def _principal(v, path, problems):
    """An exact workload identity: an override names one caller."""
    s = string()(v, path, problems)
    if s is None:
        return None
    try:
        SpiffeId.parse(s)
    except ValueError as exc:
        why = "" if str(exc).startswith("not a workload SPIFFE ID") else f": {exc}"   # say the shape once
        problems.append((path, f"{s!r} is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>){why}"))
        return None
    return s


_override_obj = obj(dict, dict(_limit_fields, principal=F("principal", _principal, required=True)))


def _override(v, path, problems):
    out = _override_obj(v, path, problems)
    if out is None:
        return None
    principal = out.pop("principal")
    limit = RateLimit(**out)
    _limit_post(limit, path, problems)
    return RateLimitOverride(principal, limit)


def _overrides(v, path, problems):
    out = max_items(list_of(_override), 64)(v, path, problems)
    if out and None not in out:
        unique(out, lambda o: o.principal, path, "principal", problems)
    return out


_rl_obj = obj(dict, dict(_limit_fields, **{
    "targetRefs": F("target_refs", _target_refs({"Service": "", "HTTPRoute": GATEWAY_GROUP,
                                                 "GRPCRoute": GATEWAY_GROUP}), required=True),
    "key": F("key", enum("None", "SourcePrincipal"), default="None"),
    "overrides": F("overrides", _overrides, default=tuple)}))


def rate_limit_policy_spec(v, path, problems):
    out = _rl_obj(v, path, problems)
    if out is None:
        return None
    limit = RateLimit(out.pop("requests_per_unit"), out.pop("unit"), out.pop("burst"))
    _limit_post(limit, path, problems)
    return RateLimitPolicySpec(limit=limit, **out)
