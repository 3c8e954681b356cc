"""Istio's AuthorizationPolicy fields, from its reference's own examples
(istio.io/latest/docs/reference/config/security/authorization-policy/ and .../conditions/):
each policy is written as YAML, validated and indexed as the control plane does, then
evaluated as ztunnel (L4: no request) and a waypoint (L7) do."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from meshcore import authz
from meshcore.authz import Allow, Deny
from meshcore.resources import parse_documents
from meshcore.state.policies import from_resource

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
DEV = "spiffe://cluster.local/ns/dev/sa/tool"
ADMIN = "spiffe://cluster.local/ns/prod/sa/admin"


def policy(spec: str, name: str = "p", ns: str = "foo"):
    text = (f"apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(spec), '  ')}")
    res = parse_documents(text, "t.yaml")
    assert not res.errors, res.errors
    return from_resource(res.resources[0])


def errors(spec: str) -> list[tuple[str, str]]:
    text = ("apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(spec), '  ')}")
    res = parse_documents(text, "t.yaml")
    assert not res.resources
    return [(e.path, e.message) for e in res.errors]


@dataclass(frozen=True)
class Call:
    """One connection (request None: ztunnel at L4) or request (a waypoint)."""
    identity: str | None = SLEEP
    port: int = 80
    request: authz.Request | None = None
    source_ip: str | None = "10.1.2.3"
    destination_ip: str | None = "10.96.0.10"

    def run(self, policies) -> authz.Decision:
        return authz.evaluate(policies, self.identity, self.port, self.request,
                              source_ip=self.source_ip, destination_ip=self.destination_ip)


def http(method="GET", path="/", host="httpbin.foo", headers=()):
    return authz.Request(method, path, host, tuple(headers))


# The reference's Operation example: host suffix .example.com, GET or HEAD, path not under /admin.
OPERATION = """
rules:
- to:
  - operation:
      hosts: ["*.example.com"]
      methods: ["GET", "HEAD"]
      notPaths: ["/admin*"]
"""
# The reference's Source example, as an ALLOW: principal admin or dev, namespace prod or test, ip not 203.0.113.4.
SOURCE = """
rules:
- from:
  - source:
      principals: ["cluster.local/ns/prod/sa/admin", "cluster.local/ns/test/sa/dev"]
      namespaces: ["prod", "test"]
      notIpBlocks: ["203.0.113.4"]
"""
# The conditions page's examples.
CONDITIONS = """
rules:
- when:
  - key: request.headers[User-Agent]
    values: ["Mozilla/*"]
  - key: source.ip
    values: ["10.1.2.3", "10.2.0.0/16"]
  - key: destination.port
    values: ["80", "443"]
"""
DENY_DEV_POST = """
action: DENY
rules:
- from: [{source: {namespaces: ["dev"]}}]
  to: [{operation: {methods: ["POST"]}}]
"""
HOSTS_BEST_PRACTICE = """
action: DENY
rules: [{to: [{operation: {hosts: ["example.com", "example.com:*"]}}]}]
"""
IP_BLOCKS = """
rules: [{from: [{source: {ipBlocks: ["10.244.1.0/24", "fd00:1::/64", "192.0.2.7"]}}]}]
"""
NOT_METHODS = """
action: DENY
rules: [{to: [{operation: {notMethods: ["GET", "HEAD"]}}]}]
"""
HEADER_NOT_VALUES = """
action: DENY
rules: [{when: [{key: "request.headers[x-token]", notValues: ["secret-*"]}]}]
"""
DESTINATION_IP = """
rules: [{when: [{key: destination.ip, values: ["10.96.0.0/16"]}, {key: source.namespace, notValues: ["dev"]}]}]
"""
PRINCIPAL_CONDITION = """
rules: [{when: [{key: source.principal, values: ["cluster.local/ns/default/*"]}]}]
"""
REMOTE_IP = """
action: DENY
rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
"""

CASES = [
    # name, spec, call, expected
    ("operation: all three match", OPERATION, Call(request=http("GET", "/data", "api.example.com")), Allow),
    ("operation: host is case-insensitive", OPERATION, Call(request=http("HEAD", "/", "API.Example.COM")), Allow),
    ("operation: host suffix misses", OPERATION, Call(request=http("GET", "/", "example.org")), Deny),
    ("operation: notPaths excludes /admin*", OPERATION, Call(request=http("GET", "/admin/x", "a.example.com")), Deny),
    ("operation: notPaths ignores the query", OPERATION, Call(request=http("GET", "/adm?x=/admin", "a.example.com")),
     Allow),
    ("operation: method outside the list", OPERATION, Call(request=http("POST", "/", "a.example.com")), Deny),
    ("operation at L4: an ALLOW with HTTP fields never matches", OPERATION, Call(), Deny),
    ("source: admin from prod", SOURCE, Call(identity=ADMIN, source_ip="10.0.0.9"), Allow),
    ("source: admin from the excluded address", SOURCE, Call(identity=ADMIN, source_ip="203.0.113.4"), Deny),
    ("source: another principal", SOURCE, Call(identity=SLEEP), Deny),
    ("conditions: all match", CONDITIONS,
     Call(request=http(headers=[("user-agent", "Mozilla/5.0")]), source_ip="10.2.9.9"), Allow),
    ("conditions: header value misses", CONDITIONS, Call(request=http(headers=[("user-agent", "curl/8")])), Deny),
    ("conditions: header absent", CONDITIONS, Call(request=http()), Deny),
    ("conditions: source.ip misses", CONDITIONS,
     Call(request=http(headers=[("user-agent", "Mozilla/5.0")]), source_ip="10.3.0.1"), Deny),
    ("conditions: destination.port misses", CONDITIONS,
     Call(port=8080, request=http(headers=[("user-agent", "Mozilla/5.0")])), Deny),
    ("conditions at L4: an ALLOW with a header condition never matches", CONDITIONS, Call(), Deny),
    ("deny dev POST", DENY_DEV_POST, Call(identity=DEV, request=http("POST")), Deny),
    ("deny dev POST: GET passes", DENY_DEV_POST, Call(identity=DEV, request=http("GET")), Allow),
    ("deny dev POST: other namespace passes", DENY_DEV_POST, Call(request=http("POST")), Allow),
    ("deny dev POST at L4: the HTTP field is dropped, the source still counts", DENY_DEV_POST, Call(identity=DEV),
     Deny),
    ("deny dev POST at L4: another source passes", DENY_DEV_POST, Call(identity=SLEEP), Allow),
    ("hosts: exact does not match with a port", """
     action: DENY
     rules: [{to: [{operation: {hosts: ["example.com"]}}]}]
     """, Call(request=http(host="example.com:8080")), Allow),
    ("hosts: exact matches without a port", HOSTS_BEST_PRACTICE, Call(request=http(host="EXAMPLE.com")), Deny),
    ("hosts: host:* matches with a port", HOSTS_BEST_PRACTICE, Call(request=http(host="example.com:8080")), Deny),
    ("hosts: another host", HOSTS_BEST_PRACTICE, Call(request=http(host="example.comx")), Allow),
    ("hosts at L4: a DENY with HTTP fields matches", HOSTS_BEST_PRACTICE, Call(), Deny),
    ("notHosts", """
     rules: [{to: [{operation: {notHosts: ["*.internal"]}}]}]
     """, Call(request=http(host="db.INTERNAL")), Deny),
    ("ipBlocks: in the CIDR", IP_BLOCKS, Call(source_ip="10.244.1.77"), Allow),
    ("ipBlocks: outside", IP_BLOCKS, Call(source_ip="10.244.2.77"), Deny),
    ("ipBlocks: a single IP", IP_BLOCKS, Call(source_ip="192.0.2.7"), Allow),
    ("ipBlocks: IPv4-mapped IPv6 counts as IPv4", IP_BLOCKS, Call(source_ip="::ffff:10.244.1.5"), Allow),
    ("ipBlocks: IPv6", IP_BLOCKS, Call(source_ip="fd00:1::42"), Allow),
    ("ipBlocks: unknown source address", IP_BLOCKS, Call(source_ip=None), Deny),
    ("notMethods: GET passes", NOT_METHODS, Call(request=http("GET")), Allow),
    ("notMethods: DELETE denied", NOT_METHODS, Call(request=http("DELETE")), Deny),
    ("header notValues: good token passes", HEADER_NOT_VALUES,
     Call(request=http(headers=[("x-token", "secret-1")])), Allow),
    ("header notValues: bad token denied", HEADER_NOT_VALUES, Call(request=http(headers=[("x-token", "guess")])),
     Deny),
    ("header notValues: no header denied", HEADER_NOT_VALUES, Call(request=http()), Deny),
    ("header: repeated values joined with a comma", """
     rules: [{when: [{key: "request.headers[x-a]", values: ["1,2"]}]}]
     """, Call(request=http(headers=[("x-a", "1"), ("x-a", "2")])), Allow),
    ("header[host] is the authority", """
     rules: [{when: [{key: "request.headers[Host]", values: ["httpbin.*"]}]}]
     """, Call(request=http(host="httpbin.foo:8000")), Allow),
    ("destination.ip and source.namespace notValues", DESTINATION_IP, Call(), Allow),
    ("destination.ip misses", DESTINATION_IP, Call(destination_ip="10.244.1.3"), Deny),
    ("source.namespace notValues excludes", DESTINATION_IP, Call(identity=DEV), Deny),
    ("source.principal prefix", PRINCIPAL_CONDITION, Call(), Allow),
    ("source.principal other", PRINCIPAL_CONDITION, Call(identity=DEV), Deny),
    ("remoteIpBlocks: the peer's address (no trusted proxy)", REMOTE_IP, Call(source_ip="203.0.113.9"), Deny),
    ("remoteIpBlocks: X-Forwarded-For is not trusted", REMOTE_IP,
     Call(source_ip="10.1.2.3", request=http(headers=[("x-forwarded-for", "203.0.113.9")])), Allow),
    ("allow-all: rules [{}]", "rules: [{}]\n", Call(identity=None, source_ip=None), Allow),
    ("allow-nothing: no rules", "{}\n", Call(), Deny),
    ("deny with no rules matches nothing", "action: DENY\n", Call(), Allow),
]


@pytest.mark.parametrize("name,spec,call,expected", CASES, ids=[c[0] for c in CASES])
def test_istio_examples(name, spec, call, expected):
    assert isinstance(call.run([policy(spec)]), expected)


def test_deny_beats_allow_and_audit_changes_nothing():
    allow_all = policy("rules: [{}]\n", "allow-all")
    deny_post = policy(DENY_DEV_POST, "deny-post")
    audit = policy("action: AUDIT\nrules: [{to: [{operation: {paths: ['/audited*']}}]}]\n", "audit-me")
    got = Call(identity=DEV, request=http("POST", "/audited/1")).run([audit, allow_all, deny_post])
    assert isinstance(got, Deny) and got.policy == "foo/deny-post" and got.audit == ("foo/audit-me",)
    got = Call(request=http("GET", "/audited/1")).run([audit, allow_all, deny_post])
    assert isinstance(got, Allow) and got.audit == ("foo/audit-me",)
    assert Call(request=http("GET", "/other")).run([audit, allow_all]).audit == ()


def test_an_audit_policy_is_not_an_allow_policy():
    """Only ALLOW policies make the default deny: an AUDIT alone allows (and says it audited)."""
    audit = policy("action: AUDIT\nrules: [{}]\n", "audit-all")
    got = Call().run([audit])
    assert isinstance(got, Allow) and got.audit == ("foo/audit-all",)
    got = Call(request=http()).run([audit, policy("{}\n", "allow-nothing")])
    assert isinstance(got, Deny) and got.audit == ("foo/audit-all",)


def test_audit_at_l4_with_http_fields_audits():
    """At L4 an AUDIT rule with HTTP fields matches (as a DENY one: more is logged, not less)."""
    audit = policy("action: AUDIT\nrules: [{when: [{key: 'request.headers[x]', values: ['1']}]}]\n", "a")
    assert Call().run([audit]).audit == ("foo/a",)


def test_denial_names_the_source_address():
    got = Call(identity=ADMIN, source_ip="203.0.113.4").run([policy(SOURCE, "admins")])
    assert isinstance(got, Deny) and "203.0.113.4" in got.reason and "foo/admins" in got.reason


def test_values_are_kept_as_written_and_canonical():
    p = policy("""
    rules:
    - from: [{source: {ipBlocks: ["10.1.2.3/16"], notRemoteIpBlocks: ["2001:DB8::1"]}}]
      to: [{operation: {ports: ["8080", 9090]}}]
      when: [{key: destination.port, values: [443, "80"]}]
    """)
    (r,) = p.rules
    assert r.from_[0].ip_blocks == ("10.1.0.0/16",) and r.from_[0].not_remote_ip_blocks == ("2001:db8::1/128",)
    assert r.to[0].ports == (8080, 9090) and r.when[0].values == ("443", "80")
    assert p.dump()["rules"][0]["when"][0]["key"] == "destination.port"   # the admin dump shows conditions


BAD = [
    # spec, path, message (part of)
    ("rules: [{from: [{source: {requestPrincipals: ['*']}}]}]\n",
     "spec.rules[0].from[0].source.requestPrincipals", "JWT request authentication is not supported"),
    ("rules: [{from: [{source: {notRequestPrincipals: ['a/b']}}]}]\n",
     "spec.rules[0].from[0].source.notRequestPrincipals", "JWT request authentication is not supported"),
    ("rules: [{when: [{key: 'request.auth.claims[iss]', values: ['x']}]}]\n",
     "spec.rules[0].when[0].key", "JWT request authentication is not supported"),
    ("rules: [{when: [{key: request.auth.principal, values: ['x']}]}]\n",
     "spec.rules[0].when[0].key", "'request.auth.principal'"),
    ("rules: [{}, {when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]\n",
     "spec.rules[1].when[0].key", "experimental"),
    ("rules: [{when: [{key: connection.sni, values: ['www.example.com']}]}]\n",
     "spec.rules[0].when[0].key", "connection.sni"),
    ("rules: [{when: [{key: request.time, values: ['x']}]}]\n",
     "spec.rules[0].when[0].key", "unknown condition key 'request.time'"),
    ("rules: [{when: [{key: source.ip}]}]\n", "spec.rules[0].when[0]", "at least one of values or notValues"),
    ("rules: [{when: [{values: ['x']}]}]\n", "spec.rules[0].when[0].key", "is required"),
    ("rules: [{when: [{key: source.ip, values: ['10.0.0.0/33']}]}]\n",
     "spec.rules[0].when[0].values[0]", "must be an IP address or a CIDR"),
    ("rules: [{when: [{key: destination.port, notValues: ['http']}]}]\n",
     "spec.rules[0].when[0].notValues[0]", "must be a port"),
    ("rules: [{when: [{key: 'request.headers[]', values: ['x']}]}]\n",
     "spec.rules[0].when[0].key", "unknown condition key"),
    ("rules: [{from: [{source: {ipBlocks: ['10.0.0.300']}}]}]\n",
     "spec.rules[0].from[0].source.ipBlocks[0]", "must be an IP address or a CIDR"),
    ("rules: [{to: [{operation: {notPaths: ['/api/{*}/x']}}]}]\n",
     "spec.rules[0].to[0].operation.notPaths[0]", "path templates"),
    ("rules: [{to: [{operation: {hosts: ['*.example.com:*']}}]}]\n", "spec.rules[0].to[0].operation.hosts[0]",
     "'*' may only be"),
    ("rules: [{to: [{operation: {paths: ['/api/*/users']}}]}]\n", "spec.rules[0].to[0].operation.paths[0]",
     "'*' may only be"),
    ("rules: [{when: [{key: 'request.headers[x]', values: ['a*b']}]}]\n", "spec.rules[0].when[0].values[0]",
     "'*' may only be"),
    ("rules: [{to: [{operation: {ports: ['eighty']}}]}]\n", "spec.rules[0].to[0].operation.ports[0]", "must be a port"),
    ("rules: [{to: [{operation: {hostz: ['a']}}]}]\n", "spec.rules[0].to[0].operation.hostz", "unknown field"),
    ("action: CUSTOM\nprovider: {name: my-ext-authz}\nrules: [{}]\n", "spec.action", "CUSTOM is not supported"),
    ("action: CUSTOM\nprovider: {name: my-ext-authz}\nrules: [{}]\n", "spec.provider", "only for action CUSTOM"),
    ("action: audit\n", "spec.action", "must be one of ALLOW, DENY, AUDIT"),
    ("selector: {matchLabels: {app: web}}\ntargetRefs: [{kind: Service, name: web}]\n", "spec.selector",
     "at most one of selector and targetRef/targetRefs"),
    ("targetRef: {kind: Service, name: a}\ntargetRefs: [{kind: Service, name: b}]\n", "spec.targetRef",
     "not both"),
]


@pytest.mark.parametrize("spec,path,message", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_refusals_name_the_field(spec, path, message):
    got = errors(spec)
    assert any(p == path and message in m for p, m in got), got


def test_istio_singular_target_ref_and_empty_jwt_lists():
    """`targetRef` (Istio's first form) is one more target; an empty requestPrincipals says
    nothing and is accepted."""
    p = policy("""
    targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
    rules: [{from: [{source: {requestPrincipals: [], namespaces: [foo]}}]}]
    """)
    assert p.target_refs == (("Gateway", "waypoint"),) and p.rules[0].from_[0].namespaces == ("foo",)
