"""trellis.dev/v1alpha1 AuthorizationPolicy: its typed spec and validation, with Istio's
field names and meanings (istio.io/latest/docs/reference/config/security/authorization-policy/
and .../conditions/). What a mesh without JWT or an external authorizer cannot evaluate is
refused with an error naming the field, never ignored: an ALLOW that relied on it would
otherwise quietly allow more, a DENY quietly deny less.

Refused: `requestPrincipals`/`notRequestPrincipals` and `request.auth.*` conditions (no
RequestAuthentication: no JWT), action CUSTOM and `provider` (no ext-authz provider),
`connection.sni` (the only TLS is HBONE's own; the app's SNI is never seen), `experimental.*`,
and path templates (`{*}`, `{**}`).

Accepted, as Istio accepts them, but warned about (`never_matches`): values that no request
can match, `methods: ["get"]` (methods are case-sensitive, RFC 9110 9.1, and Istio does not
fold them) and `paths: ["admin"]` (a request path starts with `/`), in the not- forms and in
`request.headers[:method]` / `[:path]` conditions too.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..identity import SpiffeId
from .gateway import GATEWAY_GROUP, WAYPOINT_CLASS, TargetRef
from .schema import DNS_SUBDOMAIN, F, enum, list_of, obj, string

PRINCIPAL = re.compile(r"^(\*|\*?[^*\s]+|[^*\s]+\*)$")
HEADER_KEY = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
NO_JWT = ("JWT request authentication is not supported (Trellis has no RequestAuthentication), so no "
          "request would ever carry a request principal or claims; remove it (mesh identities: `principals`)")


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()          # the peer's address: an IP or a CIDR each
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()   # the original client: no proxy is trusted, so the peer's address
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()       # the Host header / :authority as sent (port included), case-insensitive
    not_hosts: tuple[str, ...] = ()

    @property
    def has_l7(self) -> bool:
        return bool(self.methods or self.paths or self.not_methods or self.not_paths or self.hosts or self.not_hosts)


@dataclass(frozen=True)
class Condition:
    """One `when` entry: `key` (an Istio attribute) with `values` (any matches) and/or
    `notValues` (none matches)."""
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @property
    def header(self) -> str | None:
        """The header name of a `request.headers[<name>]` key (lowercase), else None."""
        m = HEADER_KEY.match(self.key)
        return m.group(1).lower() if m else None

    @property
    def is_l7(self) -> bool:
        return self.key.startswith("request.headers[")


@dataclass(frozen=True)
class Rule:
    from_: tuple[Source, ...] = ()
    to: tuple[Operation, ...] = ()
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class AuthorizationPolicySpec:
    selector: dict | None = None
    target_refs: tuple[TargetRef, ...] = ()
    action: str = "ALLOW"
    rules: tuple[Rule, ...] = ()


def _principal(v, path, problems):
    s = string()(v, path, problems)
    if s is None:
        return None
    if s.startswith("spiffe://") or s == "*" or PRINCIPAL.match(s):
        if s.startswith("spiffe://") and "*" not in s:
            try:
                SpiffeId.parse(s)
            except ValueError as exc:
                problems.append((path, f"{s!r} is not a workload SPIFFE ID: {exc}"))
                return None
        return s
    problems.append((path, f"{s!r} is not a principal: use spiffe://<td>/ns/<ns>/sa/<sa>, "
                           "a prefix*, a *suffix or *"))
    return None


def ip_block(v, path, problems):
    """An IP or a CIDR (host bits allowed, as Istio), kept in its canonical spelling."""
    s = string()(v, path, problems)
    if s is None:
        return None
    try:
        return str(ipaddress.ip_network(s.strip(), strict=False))
    except ValueError:
        problems.append((path, f"must be an IP address or a CIDR (203.0.113.4, 203.0.113.0/24, 2001:db8::/32), "
                               f"got {s!r}"))
        return None


def _port_value(lo: int):
    """A port as Istio writes it (a string) or as YAML reads a bare number (an int)."""
    def port_value(v, path, problems):
        n = int(v) if isinstance(v, str) and v.strip().isdigit() else v
        if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= 65535:
            problems.append((path, f"must be a port {lo}-65535 (a number, or a string of one), got {v!r}"))
            return None
        return n
    port_value.crd_schema = {"x-kubernetes-int-or-string": True, "anyOf": [
        {"type": "integer", "minimum": lo, "maximum": 65535}, {"type": "string", "pattern": r"^[0-9]{1,5}$"}]}
    return port_value


def _pattern(v, path, problems):
    """An Istio string match: exact, `prefix*`, `*suffix` or `*`. A `*` anywhere else would be
    a literal character (never what was meant: a DENY would silently match nothing)."""
    s = string()(v, path, problems)
    if s is None:
        return None
    if "{*" in s:
        problems.append((path, f"{s!r}: path templates ({{*}}, {{**}}) are not supported; use a prefix* or a *suffix"))
        return None
    if s != "*" and "*" in s[1:-1] or (len(s) > 1 and s[0] == s[-1] == "*"):
        problems.append((path, f"{s!r}: '*' may only be the whole value, its first or its last character "
                               "(exact, prefix*, *suffix or * matches)"))
        return None
    return s


def _refused(why: str, crd_schema: dict):
    """A field refused with `why` unless empty (an empty list says nothing). Its CRD schema
    refuses it at the API server too (an empty shape, with `why` as its description): a
    field the CRD did not list would be pruned silently, and an ALLOW would widen."""
    def refused(v, path, problems):
        if v not in ([], {}):
            problems.append((path, why))
        return None
    refused.crd_schema = dict(crd_schema, description=why)
    return refused


_strs = list_of(_pattern)
_NOTHING = {"type": "array", "items": {"type": "string"}, "maxItems": 0}
_source = obj(Source, {"principals": F("principals", list_of(_principal), default=tuple),
                       "notPrincipals": F("not_principals", list_of(_principal), default=tuple),
                       "namespaces": F("namespaces", _strs, default=tuple),
                       "notNamespaces": F("not_namespaces", _strs, default=tuple),
                       "ipBlocks": F("ip_blocks", list_of(ip_block), default=tuple),
                       "notIpBlocks": F("not_ip_blocks", list_of(ip_block), default=tuple),
                       "remoteIpBlocks": F("remote_ip_blocks", list_of(ip_block), default=tuple),
                       "notRemoteIpBlocks": F("not_remote_ip_blocks", list_of(ip_block), default=tuple),
                       "requestPrincipals": F("", _refused(NO_JWT, _NOTHING)),
                       "notRequestPrincipals": F("", _refused(NO_JWT, _NOTHING))})
_operation = obj(Operation, {"hosts": F("hosts", _strs, default=tuple),
                             "notHosts": F("not_hosts", _strs, default=tuple),
                             "ports": F("ports", list_of(_port_value(1)), default=tuple),
                             "notPorts": F("not_ports", list_of(_port_value(1)), default=tuple),
                             "methods": F("methods", _strs, default=tuple),
                             "notMethods": F("not_methods", _strs, default=tuple),
                             "paths": F("paths", _strs, default=tuple),
                             "notPaths": F("not_paths", _strs, default=tuple)})
_from = obj(dict, {"source": F("source", _source, required=True)})
_to = obj(dict, {"operation": F("operation", _operation, required=True)})

# key -> the check of each value; request.headers[<name>] is matched apart
_CONDITION_VALUES = {"source.ip": ip_block, "remote.ip": ip_block, "destination.ip": ip_block,
                     "source.namespace": _pattern, "source.principal": _principal,
                     "destination.port": _port_value(0)}
_CONDITION_REFUSED = {
    "request.auth.": NO_JWT,
    "connection.sni": ("is not supported: the only TLS in the path is HBONE's own (its SNI is not the app's); "
                       "match the destination with `ports`, destination.ip or targetRefs instead"),
    "experimental.": "experimental (Envoy filter metadata) keys are not supported: there is no Envoy here",
}
KNOWN_KEYS = ("request.headers[<name>]", *_CONDITION_VALUES)


def _condition_key(v, path, problems):
    key = string()(v, path, problems)
    if key is None:
        return None
    refused = next((why for prefix, why in _CONDITION_REFUSED.items() if key.startswith(prefix)), None)
    if refused is not None:
        problems.append((path, f"{key!r}: {refused}"))
        return None
    if not HEADER_KEY.match(key) and key not in _CONDITION_VALUES:
        problems.append((path, f"unknown condition key {key!r} (supported: {', '.join(KNOWN_KEYS)}; "
                               "request.auth.*, connection.sni and experimental.* are refused)"))
        return None
    return key


_condition_key.crd_schema = {"type": "string", "pattern": "^(request\\.headers\\[[^\\[\\]]+\\]|" + "|".join(
    k.replace(".", "\\.") for k in _CONDITION_VALUES) + ")$"}


def _any_scalar(v, path, problems):
    """A condition value: a string (Istio's type), or a bare number YAML read as an int."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        problems.append((path, f"must be a string, got {v!r}"))
        return None
    return v


_condition_fields = obj(dict, {"key": F("key", _condition_key, required=True),
                               "values": F("values", list_of(_any_scalar), default=tuple),
                               "notValues": F("not_values", list_of(_any_scalar), default=tuple)})


def _condition(v, path, problems):
    c = _condition_fields(v, path, problems)
    if c is None:
        return None
    key, before = c["key"], len(problems)
    if not c["values"] and not c["not_values"]:
        problems.append((path, "at least one of values or notValues must be set"))
    check = _pattern if HEADER_KEY.match(key) else _CONDITION_VALUES[key]
    out = {}
    for field, name in (("values", "values"), ("not_values", "notValues")):
        out[field] = tuple(str(check(x, f"{path}.{name}[{i}]", problems)) for i, x in enumerate(c[field]))
    return None if len(problems) > before else Condition(key, out["values"], out["not_values"])


def _rule(v, path, problems):
    r = obj(dict, {"from": F("from_", list_of(_from), default=tuple),
                   "to": F("to", list_of(_to), default=tuple),
                   "when": F("when", list_of(_condition), default=tuple)})(v, path, problems)
    if r is None:
        return None
    return Rule(from_=tuple(x["source"] for x in r["from_"]), to=tuple(x["operation"] for x in r["to"]),
                when=r["when"])


def _action(v, path, problems):
    if v == "CUSTOM":
        problems.append((path, "CUSTOM is not supported: it delegates to an external authorizer (an ext-authz "
                               "provider), and Trellis has none; use ALLOW or DENY rules"))
        return None
    return enum("ALLOW", "DENY", "AUDIT")(v, path, problems)


def _target_ref_post(t: TargetRef, path: str, problems) -> None:
    """Istio's mesh-wide waypoint form: a GatewayClass target names the waypoints' class (and
    applies from the root namespace only: State warns about one elsewhere)."""
    if t.kind != "GatewayClass":
        return
    if t.group not in ("", GATEWAY_GROUP):
        problems.append((f"{path}.group", f"a GatewayClass is in group {GATEWAY_GROUP!r}, got {t.group!r}"))
    if t.name != WAYPOINT_CLASS:
        problems.append((f"{path}.name", f"a GatewayClass target must name the waypoints' class {WAYPOINT_CLASS!r}, "
                                         f"got {t.name!r}"))


_target_ref = obj(TargetRef, {"group": F("group", string(), default=""),
                              "kind": F("kind", enum("Service", "Namespace", "Gateway", "GatewayClass"), required=True),
                              "name": F("name", string(DNS_SUBDOMAIN, "name"), required=True)},
                  post=_target_ref_post)


def authorization_policy_spec(selector):
    """The spec's Check, given the workload selector's Check (kinds.py owns it). Istio's
    singular `targetRef` is one more entry of `targetRefs`; as in Istio, at most one of
    `selector` and `targetRef`/`targetRefs` is set."""
    fields = obj(dict, {
        "selector": F("selector", selector),
        "targetRef": F("target_ref", _target_ref),
        "targetRefs": F("target_refs", list_of(_target_ref), default=tuple),
        "action": F("action", _action, default="ALLOW"),
        "provider": F("", _refused("is only for action CUSTOM, which is not supported (no ext-authz provider)",
                                   {"type": "object", "maxProperties": 0})),
        "rules": F("rules", list_of(_rule), default=tuple)})

    def spec(v, path, problems):
        d = fields(v, path, problems)
        if d is None:
            return None
        refs = d["target_refs"] + ((d["target_ref"],) if d["target_ref"] is not None else ())
        if d["target_ref"] is not None and d["target_refs"]:
            problems.append((f"{path}.targetRef", "set targetRef or targetRefs, not both"))
            return None
        if d["selector"] is not None and refs:
            problems.append((f"{path}.selector", "at most one of selector and targetRef/targetRefs may be set "
                                                 "(Istio's rule): the selector would be ignored"))
            return None
        return AuthorizationPolicySpec(selector=d["selector"], target_refs=refs, action=d["action"], rules=d["rules"])
    return spec


def _method_never_matches(pattern: str) -> str | None:
    if pattern == pattern.upper():
        return None
    return (f"{pattern!r} has lowercase letters, so it never matches: HTTP methods are case-sensitive "
            f"(RFC 9110 9.1) and Istio compares them as written; write {pattern.upper()!r}")


def _path_never_matches(pattern: str) -> str | None:
    if pattern.startswith(("/", "*")):
        return None
    return f"{pattern!r} never matches: a request path starts with '/'; write {'/' + pattern!r}"


_NEVER_OPERATION = (("methods", "methods", _method_never_matches), ("notMethods", "not_methods", _method_never_matches),
                    ("paths", "paths", _path_never_matches), ("notPaths", "not_paths", _path_never_matches))
_NEVER_HEADER = {":method": _method_never_matches, ":path": _path_never_matches}


def never_matches(spec: AuthorizationPolicySpec, path: str = "spec") -> list[tuple[str, str]]:
    """(field path, why) for each value of a valid spec that no request can match. Istio accepts
    them, so they are warnings, not errors; but in an ALLOW the rule silently allows less, and
    in a DENY (or a not- field) it silently lets through what it was written to stop."""
    found = []
    for i, rule in enumerate(spec.rules):
        for j, op in enumerate(rule.to):
            found += [(f"{path}.rules[{i}].to[{j}].operation.{name}", getattr(op, attr), check)
                      for name, attr, check in _NEVER_OPERATION]
        for j, c in enumerate(rule.when):
            if c.header in _NEVER_HEADER:
                found += [(f"{path}.rules[{i}].when[{j}].{name}", values, _NEVER_HEADER[c.header])
                          for name, values in (("values", c.values), ("notValues", c.not_values))]
    return [(f"{where}[{k}]", why) for where, values, check in found
            for k, value in enumerate(values) if (why := check(value))]


__all__ = ["AuthorizationPolicySpec", "Condition", "Operation", "Rule", "Source", "authorization_policy_spec", "ip_block",
           "never_matches"]
