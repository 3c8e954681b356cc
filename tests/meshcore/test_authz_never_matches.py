"""AuthorizationPolicy values no request can match (`methods: [get]`, `paths: [admin]`, their
not- forms, `request.headers[:method]`/`[:path]` conditions): Istio accepts them and so do
we, but each is a config warning naming the file, the object and the field path; and they
really never match (methods are case-sensitive, a request path starts with '/')."""
from meshcore.authz import Allow, Deny, Request, evaluate
from meshcore.resources import parse_documents
from meshcore.state import State

POLICY = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET, get, "ge*", "*"], paths: [/api, admin, "*.css", "health*"]}
    - operation: {notMethods: [delete], notPaths: [private]}
    when:
    - {key: "request.headers[:method]", values: [post, POST]}
    - {key: "request.headers[:path]", notValues: [/ok, secret]}
    - {key: "request.headers[x-mode]", values: [get, admin]}
"""

WHY_METHOD = "HTTP methods are case-sensitive"
WHY_PATH = "a request path starts with '/'"


def test_each_value_no_request_matches_is_a_warning_naming_file_object_and_field():
    loaded = parse_documents(POLICY, "web.yaml")
    assert loaded.errors == []     # accepted, as Istio accepts it
    state = State.from_resources(loaded.resources)
    where = {w.split(": ")[2]: w for w in state.warnings}
    assert sorted(where) == sorted([
        "spec.rules[0].to[0].operation.methods[1]", "spec.rules[0].to[0].operation.methods[2]",
        "spec.rules[0].to[0].operation.paths[1]", "spec.rules[0].to[0].operation.paths[3]",
        "spec.rules[0].to[1].operation.notMethods[0]", "spec.rules[0].to[1].operation.notPaths[0]",
        "spec.rules[0].when[0].values[0]", "spec.rules[0].when[1].notValues[1]"]), state.warnings
    assert all(w.startswith("web.yaml: AuthorizationPolicy shop/web: ") for w in state.warnings)
    assert WHY_METHOD in where["spec.rules[0].to[0].operation.methods[1]"]
    assert "write 'GET'" in where["spec.rules[0].to[0].operation.methods[1]"]
    assert WHY_PATH in where["spec.rules[0].to[0].operation.paths[1]"]
    assert "write '/admin'" in where["spec.rules[0].to[0].operation.paths[1]"]
    assert WHY_METHOD in where["spec.rules[0].when[0].values[0]"]
    assert WHY_PATH in where["spec.rules[0].when[1].notValues[1]"]


def test_they_really_never_match():
    policy = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: shop}}
spec: {{action: {action}, rules: [{{to: [{{operation: {op}}}]}}]}}
"""
    def decide(action, op, method="GET", path="/admin"):
        loaded = parse_documents(policy.format(action=action, op=op), "p.yaml")
        state = State.from_resources(loaded.resources)
        assert state.warnings, op
        return evaluate(state.policies, "spiffe://cluster.local/ns/shop/sa/a", 80, Request(method, path))
    assert isinstance(decide("ALLOW", "{methods: [get]}"), Deny)
    assert isinstance(decide("ALLOW", "{paths: [admin]}"), Deny)
    assert isinstance(decide("DENY", "{methods: [get]}"), Allow)       # the DENY stops nothing
    assert isinstance(decide("DENY", "{paths: [admin]}"), Allow)
    assert isinstance(decide("ALLOW", "{notPaths: [admin]}"), Allow)   # excludes nothing


def test_well_written_values_warn_of_nothing():
    doc = POLICY.replace("get, ", "").replace('"ge*", ', "").replace("admin, ", "").replace('"health*"', '"/health*"')
    doc = doc.replace("[delete]", "[DELETE]").replace("[private]", "[/private]").replace("[post, POST]", "[POST]")
    doc = doc.replace("secret]", "/secret]")
    state = State.from_resources(parse_documents(doc, "web.yaml").resources)
    assert state.warnings == []
