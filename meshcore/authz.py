"""Authorization (pure), with Istio's AuthorizationPolicy semantics, at L4 and L7.

Any matching DENY denies; then, if any ALLOW policy applies to the workload, one of them
must match. ztunnel evaluates at L4 (no request): L7 conditions (methods, paths) cannot be
checked there, so an ALLOW rule carrying them never matches and a DENY rule carrying them
matches regardless (fail closed, as Istio). A waypoint passes the HTTP request and the same
rules are evaluated for real.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .mesh import namespace_matches, principal_matches, string_matches
from .state import AuthzPolicy, Operation, Rule, Source


@dataclass(frozen=True)
class Request:
    """What L7 rules look at (a waypoint fills it from the HTTP request)."""
    method: str
    path: str          # the request target; the query is not part of what paths match (Istio's url_path)
    host: str | None = None

    @property
    def url_path(self) -> str:
        return self.path.split("?", 1)[0]


@dataclass(frozen=True)
class Allow:
    reason: str = "allowed"


@dataclass(frozen=True)
class Deny:
    reason: str
    policy: str | None = None


Decision = Allow | Deny


def _source_matches(src: Source, identity: str | None) -> bool:
    if src.principals and not principal_matches(src.principals, identity):
        return False
    if src.not_principals and principal_matches(src.not_principals, identity):
        return False
    if src.namespaces and not namespace_matches(src.namespaces, identity):
        return False
    if src.not_namespaces and namespace_matches(src.not_namespaces, identity):
        return False
    return True


def _l7_matches(op: Operation, request: Request) -> bool:
    if op.methods and not any(string_matches(m, request.method) for m in op.methods):
        return False
    if op.paths and not any(string_matches(p, request.url_path) for p in op.paths):
        return False
    return True


def _operation_matches(op: Operation, port: int, action: str, request: Request | None) -> bool:
    if op.ports and port not in op.ports:
        return False
    if op.not_ports and port in op.not_ports:
        return False
    if op.has_l7:
        if request is None:
            return action != "ALLOW"   # at L4: ALLOW never, DENY always (fail closed)
        return _l7_matches(op, request)
    return True


def _rule_matches(rule: Rule, identity: str | None, port: int, action: str, request: Request | None) -> bool:
    if rule.from_ and not any(_source_matches(s, identity) for s in rule.from_):
        return False
    if rule.to and not any(_operation_matches(o, port, action, request) for o in rule.to):
        return False
    return True


def policy_matches(policy: AuthzPolicy, identity: str | None, port: int, request: Request | None = None) -> bool:
    return any(_rule_matches(r, identity, port, policy.action, request) for r in policy.rules)


def evaluate(policies: Iterable[AuthzPolicy], peer_identity: str | None, port: int,
             request: Request | None = None) -> Decision:
    """Decide for a connection (request None: at L4) or an HTTP request from `peer_identity`
    to `port` of a workload these policies apply to."""
    policies = list(policies)
    who = peer_identity or "an unauthenticated peer"
    what = f"port {port}" if request is None else f"{request.method} {request.url_path} on port {port}"
    for p in policies:
        if p.action == "DENY" and policy_matches(p, peer_identity, port, request):
            return Deny(f"denied by DENY policy {p.key}: it matches {who} on {what}", p.key)
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return Allow("no ALLOW policy applies")
    for p in allows:
        if policy_matches(p, peer_identity, port, request):
            return Allow(f"allowed by {p.key}")
    names = ", ".join(p.key for p in allows)
    return Deny(f"no ALLOW policy matches {who} on {what} (policies applying here: {names}); "
                f"add a rule for this principal if the connection is expected", names)
