"""L4 authorization at the inbound side (pure), with Istio's AuthorizationPolicy semantics.

Any matching DENY denies; then, if any ALLOW policy applies to the workload, one of
them must match. L7 conditions (methods, paths) cannot be checked at L4: an ALLOW rule
carrying them never matches, a DENY rule carrying them matches regardless (fail closed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .state import AuthzPolicy, Operation, Rule, Source


@dataclass(frozen=True)
class Allow:
    reason: str = "allowed"


@dataclass(frozen=True)
class Deny:
    reason: str
    policy: str | None = None


Decision = Allow | Deny


def _principal(identity: str | None) -> str | None:
    """Istio principals drop the scheme: "cluster.local/ns/default/sa/web"."""
    if identity is None:
        return None
    return identity[len("spiffe://"):] if identity.startswith("spiffe://") else identity


def _namespace(identity: str | None) -> str | None:
    parts = (_principal(identity) or "").split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None


def _value_matches(patterns: Iterable[str], value: str | None) -> bool:
    """Istio string match: exact, "*", prefix "abc*" or suffix "*abc"."""
    if value is None:
        return False
    for p in patterns:
        p = _principal(p)
        if p == "*" or p == value:
            return True
        if (p.endswith("*") and value.startswith(p[:-1])) or (p.startswith("*") and value.endswith(p[1:])):
            return True
    return False


def _source_matches(src: Source, identity: str | None) -> bool:
    principal, ns = _principal(identity), _namespace(identity)
    if src.principals and not _value_matches(src.principals, principal):
        return False
    if src.not_principals and _value_matches(src.not_principals, principal):
        return False
    if src.namespaces and not _value_matches(src.namespaces, ns):
        return False
    if src.not_namespaces and _value_matches(src.not_namespaces, ns):
        return False
    return True


def _operation_matches(op: Operation, port: int, action: str) -> bool:
    if op.has_l7 and action == "ALLOW":
        return False
    if op.ports and port not in op.ports:
        return False
    if op.not_ports and port in op.not_ports:
        return False
    return True


def _rule_matches(rule: Rule, identity: str | None, port: int, action: str) -> bool:
    if rule.from_ and not any(_source_matches(s, identity) for s in rule.from_):
        return False
    if rule.to and not any(_operation_matches(o, port, action) for o in rule.to):
        return False
    return True


def policy_matches(policy: AuthzPolicy, identity: str | None, port: int) -> bool:
    return any(_rule_matches(r, identity, port, policy.action) for r in policy.rules)


def evaluate(policies: Iterable[AuthzPolicy], peer_identity: str | None, port: int) -> Decision:
    """Decide for a connection from `peer_identity` to `port` of a workload these policies apply to."""
    policies = list(policies)
    who = peer_identity or "an unauthenticated peer"
    for p in policies:
        if p.action == "DENY" and policy_matches(p, peer_identity, port):
            return Deny(f"denied by DENY policy {p.key}: it matches {who} on port {port}", p.key)
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return Allow("no ALLOW policy applies")
    for p in allows:
        if policy_matches(p, peer_identity, port):
            return Allow(f"allowed by {p.key}")
    names = ", ".join(p.key for p in allows)
    return Deny(f"no ALLOW policy matches {who} on port {port} (policies applying here: {names}); "
                f"add a rule for this principal if the connection is expected", names)
