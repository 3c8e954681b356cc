import pytest

from meshcore import authz
from meshcore.authz import Allow, Deny

from zt_helpers import pol, rule

A = "spiffe://cluster.local/ns/default/sa/client"
B = "spiffe://cluster.local/ns/shop/sa/cart"

CASES = [
    ("no policies", [], A, 80, Allow),
    ("allow principal", [pol("p", rules=[rule(principals=["cluster.local/ns/default/sa/client"])])], A, 80, Allow),
    ("allow other principal", [pol("p", rules=[rule(principals=["cluster.local/ns/default/sa/x"])])], A, 80, Deny),
    ("allow with spiffe prefix", [pol("p", rules=[rule(principals=[A])])], A, 80, Allow),
    ("allow wildcard prefix", [pol("p", rules=[rule(principals=["cluster.local/ns/default/*"])])], A, 80, Allow),
    ("allow wildcard suffix", [pol("p", rules=[rule(principals=["*/sa/client"])])], A, 80, Allow),
    ("allow star", [pol("p", rules=[rule(principals=["*"])])], A, 80, Allow),
    ("allow namespace", [pol("p", rules=[rule(namespaces=["default"])])], A, 80, Allow),
    ("allow namespace other", [pol("p", rules=[rule(namespaces=["default"])])], B, 80, Deny),
    ("allow notNamespaces", [pol("p", rules=[rule(not_namespaces=["shop"])])], B, 80, Deny),
    ("allow notPrincipals", [pol("p", rules=[rule(not_principals=["cluster.local/ns/shop/sa/cart"])])], A, 80, Allow),
    ("allow ports match", [pol("p", rules=[rule(ports=[80])])], A, 80, Allow),
    ("allow ports miss", [pol("p", rules=[rule(ports=[80])])], A, 81, Deny),
    ("allow notPorts", [pol("p", rules=[rule(not_ports=[81])])], A, 81, Deny),
    ("allow both fields all must match", [pol("p", rules=[rule(principals=[A], ports=[80])])], A, 81, Deny),
    ("allow empty rule matches all", [pol("p", rules=[rule()])], B, 9, Allow),
    ("allow no rules denies all", [pol("p")], A, 80, Deny),
    ("allow L7 never matches", [pol("p", rules=[rule(methods=["GET"])])], A, 80, Deny),
    ("deny principal", [pol("d", "DENY", rules=[rule(principals=[A])])], A, 80, Deny),
    ("deny other principal", [pol("d", "DENY", rules=[rule(principals=[A])])], B, 80, Allow),
    ("deny no rules matches nothing", [pol("d", "DENY")], A, 80, Allow),
    ("deny L7 always matches", [pol("d", "DENY", rules=[rule(principals=[A], paths=["/admin"])])], A, 80, Deny),
    ("deny beats allow", [pol("a", rules=[rule()]), pol("d", "DENY", rules=[rule(namespaces=["default"])])], A, 80, Deny),
    ("deny elsewhere, allow here", [pol("a", rules=[rule()]), pol("d", "DENY", rules=[rule(namespaces=["shop"])])], A, 80, Allow),
    ("one of two allows", [pol("a1", rules=[rule(principals=[B])]), pol("a2", rules=[rule(principals=[A])])], A, 80, Allow),
    ("rule list is OR", [pol("a", rules=[rule(ports=[1]), rule(ports=[80])])], A, 80, Allow),
    ("unauthenticated vs principals", [pol("a", rules=[rule(principals=["*"])])], None, 80, Deny),
    ("unauthenticated vs empty rule", [pol("a", rules=[rule()])], None, 80, Allow),
    ("deny port only", [pol("d", "DENY", rules=[rule(ports=[22])])], A, 22, Deny),
    ("deny port only other port", [pol("d", "DENY", rules=[rule(ports=[22])])], A, 80, Allow),
]


@pytest.mark.parametrize("name,policies,peer,port,expected", CASES, ids=[c[0] for c in CASES])
def test_evaluate_table(name, policies, peer, port, expected):
    assert isinstance(authz.evaluate(policies, peer, port), expected)


def test_deny_reason_names_policy_and_principal():
    d = authz.evaluate([pol("block-client", "DENY", rules=[rule(principals=[A])])], A, 80)
    assert d.policy == "default/block-client"
    assert "default/block-client" in d.reason and A in d.reason


def test_no_allow_match_reason_lists_policies():
    d = authz.evaluate([pol("only-b", rules=[rule(principals=[B])])], A, 80)
    assert "default/only-b" in d.reason and A in d.reason and "port 80" in d.reason


from hypothesis import given, strategies as st

_names = st.sampled_from(["a", "b", "client", "web"])
_principals = st.builds(lambda ns, sa: f"cluster.local/ns/{ns}/sa/{sa}", _names, _names)
_rules = st.builds(lambda p, n, ports, np_: rule(principals=p, namespaces=n, ports=ports, not_ports=np_),
                   st.lists(_principals, max_size=2), st.lists(_names, max_size=2),
                   st.lists(st.integers(1, 5), max_size=2), st.lists(st.integers(1, 5), max_size=1))
_policies = st.lists(st.builds(lambda i, action, rules: pol(f"p{i}", action, rules=rules),
                               st.integers(0, 99), st.sampled_from(["ALLOW", "DENY"]),
                               st.lists(_rules, max_size=3)), max_size=4)


@given(_policies, _principals, st.integers(1, 5))
def test_deny_all_rule_always_wins(policies, principal, port):
    peer = "spiffe://" + principal
    assert isinstance(authz.evaluate(policies + [pol("zz", "DENY", rules=[rule()])], peer, port), Deny)


@given(_policies, _principals, st.integers(1, 5))
def test_decision_is_consistent_with_policy_matches(policies, principal, port):
    peer = "spiffe://" + principal
    d = authz.evaluate(policies, peer, port)
    denies = [p for p in policies if p.action == "DENY" and authz.policy_matches(p, peer, port)]
    allows = [p for p in policies if p.action == "ALLOW"]
    expect_allow = not denies and (not allows or any(authz.policy_matches(p, peer, port) for p in allows))
    assert isinstance(d, Allow) == expect_allow
    if isinstance(d, Deny):
        assert d.reason and d.policy


GET_API = authz.Request("GET", "/api/items?page=2", "cart.shop")
POST_ADMIN = authz.Request("POST", "/admin/reset")

L7_CASES = [
    # (name, policies, request, expected): at a waypoint the L7 fields are evaluated for real
    ("allow method match", [pol("p", rules=[rule(methods=["GET"])])], GET_API, Allow),
    ("allow method miss", [pol("p", rules=[rule(methods=["GET"])])], POST_ADMIN, Deny),
    ("allow path prefix ignores the query", [pol("p", rules=[rule(paths=["/api/*"])])], GET_API, Allow),
    ("allow exact path with a query", [pol("p", rules=[rule(paths=["/api/items"])])], GET_API, Allow),
    ("allow path miss", [pol("p", rules=[rule(paths=["/api/*"])])], POST_ADMIN, Deny),
    ("allow method and path both", [pol("p", rules=[rule(methods=["POST"], paths=["/api/*"])])], POST_ADMIN, Deny),
    ("allow principal and method", [pol("p", rules=[rule(principals=[A], methods=["GET"])])], GET_API, Allow),
    ("deny path match", [pol("d", "DENY", rules=[rule(paths=["/admin/*"])])], POST_ADMIN, Deny),
    ("deny path miss", [pol("d", "DENY", rules=[rule(paths=["/admin/*"])])], GET_API, Allow),
    ("deny method suffix", [pol("d", "DENY", rules=[rule(methods=["*ST"])])], POST_ADMIN, Deny),
    ("L4 rule at L7 still applies", [pol("p", rules=[rule(ports=[81])])], GET_API, Deny),
]


@pytest.mark.parametrize("name,policies,request_,expected", L7_CASES, ids=[c[0] for c in L7_CASES])
def test_evaluate_l7_table(name, policies, request_, expected):
    assert isinstance(authz.evaluate(policies, A, 80, request_), expected)


def test_l7_rules_at_l4_fail_closed():
    """Without a request (ztunnel), an L7 ALLOW rule never matches and an L7 DENY rule always does."""
    allow = [pol("p", rules=[rule(methods=["GET"])])]
    deny = [pol("d", "DENY", rules=[rule(paths=["/admin/*"])])]
    assert isinstance(authz.evaluate(allow, A, 80), Deny)
    assert isinstance(authz.evaluate(allow, A, 80, GET_API), Allow)
    assert isinstance(authz.evaluate(deny, A, 80), Deny)
    assert isinstance(authz.evaluate(deny, A, 80, GET_API), Allow)


def test_l7_deny_reason_names_the_request():
    d = authz.evaluate([pol("no-admin", "DENY", rules=[rule(paths=["/admin/*"])])], A, 80, POST_ADMIN)
    assert "POST /admin/reset" in d.reason and "default/no-admin" in d.reason
