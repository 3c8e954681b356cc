"""Gateway API status, computed (controlplane/status.py), table-driven from the spec's
conditions and reasons (apis/v1/shared_types.go, httproute_types.go, gateway_types.go)."""
import pytest
import yaml

from controlplane.status import merge_conditions, new_status, problems_by_object
from meshcore.resources import parse_documents
from meshcore.resources.grants import CONTROLLER_NAME

NOW, LATER = "2026-12-02T10:00:00Z", "2026-12-02T11:00:00Z"
WORLD = """\
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {trellis.dev/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: mesh}
spec: {clusterIP: 10.96.0.11, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: other}
spec: {clusterIP: 10.96.0.12, ports: [{port: 5432, targetPort: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: plain}
spec: {clusterIP: 10.96.0.13, ports: [{port: 80, targetPort: 80}]}
---
"""


def world(extra=""):
    res = parse_documents(WORLD + extra, "cfg.yaml")
    return {r.key: r for r in res.resources}, res.errors


def route(parent="{group: \"\", kind: Service, name: echo}", backends="[{name: echo-v2, port: 80}]", ns="mesh",
          kind="HTTPRoute"):
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: {ns}}}\n"
            f"spec:\n  parentRefs: [{parent}]\n  rules:\n  - backendRefs: {backends}\n---\n")


def status_of(text, extra="", name="r", ns="mesh", kind="HTTPRoute", now=NOW, served_status=None, generation=None):
    resources, errors = world(extra + text)
    raw = dict(next(r.raw for r in resources.values() if r.key == (kind, ns, name)))
    if served_status is not None:
        raw["status"] = served_status
    if generation:
        raw["metadata"] = {**raw["metadata"], "generation": generation}
    return new_status(raw, resources, problems_by_object(errors), now)


def conditions(parent_entry):
    return {c["type"]: (c["status"], c["reason"]) for c in parent_entry["conditions"]}


GRANT = ("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: other}\n"
         "spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}]\n"
         "  to: [{group: \"\", kind: Service}]\n---\n")


@pytest.mark.parametrize("text,extra,accepted,resolved,waypoint", [
    (route(), "", ("True", "Accepted"), ("True", "ResolvedRefs"), ("True", "ResolvedWaypoints")),
    (route(parent="{group: \"\", kind: Service, name: nope}"), "",
     ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), ("False", "NoMatchingParent")),
    (route(parent="{group: \"\", kind: Service, name: echo, port: 81}"), "",
     ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), ("False", "NoMatchingParent")),
    (route(parent="{group: \"\", kind: Service, name: echo, sectionName: grpc}"), "",
     ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), ("False", "NoMatchingParent")),
    (route(parent="{group: \"\", kind: Service, name: echo, sectionName: http}"), "",
     ("True", "Accepted"), ("True", "ResolvedRefs"), ("True", "ResolvedWaypoints")),
    (route(backends="[{name: missing, port: 80}]"), "",
     ("True", "Accepted"), ("False", "BackendNotFound"), ("True", "ResolvedWaypoints")),
    (route(backends="[{name: echo-v2, port: 9999}]"), "",
     ("True", "Accepted"), ("False", "BackendNotFound"), ("True", "ResolvedWaypoints")),
    (route(backends="[{group: example.com, kind: Bucket, name: b}]"), "",
     ("True", "Accepted"), ("False", "InvalidKind"), ("True", "ResolvedWaypoints")),
    (route(backends="[{name: db, namespace: other, port: 5432}]"), "",
     ("True", "Accepted"), ("False", "RefNotPermitted"), ("True", "ResolvedWaypoints")),
    (route(backends="[{name: db, namespace: other, port: 5432}]"), GRANT,
     ("True", "Accepted"), ("True", "ResolvedRefs"), ("True", "ResolvedWaypoints")),
    (route(parent="{group: \"\", kind: Service, name: web}", backends="[{name: web, port: 80}]", ns="plain"), "",
     ("True", "Accepted"), ("True", "ResolvedRefs"), ("False", "MissingUseWaypointLabel")),
])
def test_route_parent_conditions(text, extra, accepted, resolved, waypoint):
    st = status_of(text, extra, ns="plain" if "ns: plain" in text or "namespace: plain" in text else "mesh")
    [entry] = st["parents"]
    assert entry["controllerName"] == CONTROLLER_NAME == "trellis.dev/waypoint-controller"
    assert conditions(entry) == {"Accepted": accepted, "ResolvedRefs": resolved, "ResolvedWaypoints": waypoint}
    for c in entry["conditions"]:
        assert c["observedGeneration"] == 1 and c["lastTransitionTime"] == NOW


NO_VIP = ("apiVersion: v1\nkind: Service\nmetadata: {name: db-pods, namespace: mesh}\n"
          "spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n---\n"
          "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: mesh}\n"
          "spec: {type: ExternalName, externalName: api.example.com, ports: [{port: 80}]}\n---\n")


@pytest.mark.parametrize("parent,backends,accepted,resolved,says", [
    # GEP-1294: headless and ExternalName Services are no route parents (no address to attach to)
    ("db-pods", "[{name: echo-v2, port: 80}]", ("False", "UnsupportedValue"), ("True", "ResolvedRefs"),
     "mesh/db-pods is headless (clusterIP: None)"),
    ("ext", "[{name: echo-v2, port: 80}]", ("False", "UnsupportedValue"), ("True", "ResolvedRefs"),
     "mesh/ext is of type ExternalName"),
    # a headless backend has endpoints (its pods): fine; ExternalName: the spec's SHOULD NOT
    ("echo", "[{name: db-pods, port: 5432}]", ("True", "Accepted"), ("True", "ResolvedRefs"), ""),
    ("echo", "[{name: ext, port: 80}]", ("True", "Accepted"), ("False", "InvalidKind"),
     "mesh/ext: Service of type ExternalName is not supported"),
])
def test_services_without_a_cluster_ip_as_parent_and_backend(parent, backends, accepted, resolved, says):
    st = status_of(route(parent=f"{{group: \"\", kind: Service, name: {parent}}}", backends=backends), NO_VIP)
    [entry] = st["parents"]
    got = conditions(entry)
    assert (got["Accepted"], got["ResolvedRefs"]) == (accepted, resolved)
    assert says in " ".join(c["message"] for c in entry["conditions"])


def test_the_first_problem_names_the_reason_and_the_message_names_all():
    st = status_of(route(backends="[{name: db, namespace: other, port: 5432}, {name: gone, port: 80}]"))
    c = next(c for c in st["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
    assert c["reason"] == "RefNotPermitted" and "other/db" in c["message"] and "mesh/gone" in c["message"]


def test_parent_ref_is_echoed_and_other_controllers_entries_are_kept():
    other = {"parentRef": {"name": "ingress"}, "controllerName": "example.net/gateway",
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}
    text = route(parent="{group: \"\", kind: Service, name: echo, port: 80}, {name: ingress}")
    st = status_of(text, served_status={"parents": [other]})
    assert st["parents"][0] == other and len(st["parents"]) == 2
    assert st["parents"][1]["parentRef"] == {"group": "", "kind": "Service", "name": "echo", "port": 80}


def test_a_route_on_the_waypoint_gateway_is_not_allowed_by_its_listener():
    st = status_of(route(parent="{name: waypoint}"))
    assert conditions(st["parents"][0])["Accepted"] == ("False", "NotAllowedByListeners")


def test_a_route_of_another_controller_only_is_none_of_ours():
    assert status_of(route(parent="{name: some-ingress}")) is None


def test_consumer_route_is_accepted_and_says_whom_it_applies_to():
    text = route(parent="{group: \"\", kind: Service, name: echo, namespace: mesh}",
                 backends="[{name: echo, namespace: mesh, port: 80}]", ns="plain")
    [entry] = status_of(text, ns="plain")["parents"]
    assert conditions(entry)["Accepted"] == ("True", "Accepted")
    assert conditions(entry)["ResolvedRefs"] == ("True", "ResolvedRefs")   # the parent itself: no grant needed
    assert "applies to requests from namespace plain" in entry["conditions"][0]["message"]


def test_an_invalid_route_is_not_accepted_with_the_validation_message():
    resources, _ = world()
    raw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "bad", "namespace": "mesh", "generation": 3},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                    "rules": [{"backendRefs": [{"name": "echo-v2"}]}]}}
    errors = parse_documents(__import__("yaml").safe_dump(raw), "k8s").errors
    st = new_status(raw, resources, problems_by_object(errors), NOW)
    [c] = st["parents"][0]["conditions"]
    assert (c["status"], c["reason"], c["observedGeneration"]) == ("False", "UnsupportedValue", 3)
    assert "Must have port for Service reference" in c["message"]


def test_last_transition_time_is_kept_while_the_status_holds_and_moves_when_it_flips():
    first = status_of(route(), generation=1)
    again = status_of(route(), now=LATER, served_status=first, generation=2)
    assert [c["lastTransitionTime"] for c in again["parents"][0]["conditions"]] == [NOW] * 3
    assert [c["observedGeneration"] for c in again["parents"][0]["conditions"]] == [2] * 3
    same = status_of(route(), now=LATER, served_status=first)
    assert same == first        # nothing changed: the writer has nothing to write
    flipped = status_of(route(backends="[{name: missing, port: 80}]"), now=LATER, served_status=first)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["parents"][0]["conditions"]}
    assert times == {"Accepted": NOW, "ResolvedRefs": LATER, "ResolvedWaypoints": NOW}


def test_merge_conditions_keeps_time_when_only_reason_or_message_changes():
    old = [{"type": "Accepted", "status": "False", "reason": "A", "message": "x", "lastTransitionTime": NOW,
            "observedGeneration": 1}]
    new = merge_conditions(old, [{"type": "Accepted", "status": "False", "reason": "B", "message": "y"}], 2, LATER)
    assert new == [{"type": "Accepted", "status": "False", "reason": "B", "message": "y", "observedGeneration": 2,
                    "lastTransitionTime": NOW}]


REPLICA = """\
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: waypoint-0, namespace: mesh, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {address: 10.0.0.9, node: node1, serviceAccount: waypoint}
---
"""
WAYPOINT_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: mesh}
spec: {clusterIP: 10.96.0.99, selector: {gateway.networking.k8s.io/gateway-name: waypoint},
       ports: [{name: mesh, port: 15008, targetPort: 15008}]}
---
"""


def test_gateway_is_accepted_and_programmed_once_a_replica_runs():
    pending = status_of("", kind="Gateway", name="waypoint")
    assert {c["type"]: (c["status"], c["reason"]) for c in pending["conditions"]} == {
        "Accepted": ("True", "Accepted"), "Programmed": ("False", "Pending")}
    assert "addresses" not in pending
    ready = status_of("", REPLICA + WAYPOINT_SERVICE, kind="Gateway", name="waypoint", served_status=pending,
                      now=LATER)
    assert {c["type"]: (c["status"], c["lastTransitionTime"]) for c in ready["conditions"]} == {
        "Accepted": ("True", NOW), "Programmed": ("True", LATER)}
    assert ready["addresses"] == [{"type": "IPAddress", "value": "10.96.0.99"}]


def test_gateway_of_another_class_is_none_of_ours():
    gw = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: mesh}\n"
          "spec: {gatewayClassName: other, listeners: [{name: http, port: 80, protocol: HTTP}]}\n---\n")
    assert status_of(gw, kind="Gateway", name="edge") is None


@pytest.mark.parametrize("name,controller,expected", [
    ("trellis-waypoint", "trellis.dev/waypoint-controller", ("True", "Accepted")),
    ("other", "trellis.dev/waypoint-controller", ("False", "Unsupported")),
    ("trellis-waypoint", "example.net/gateway-controller", None),
])
def test_gateway_class_accepted_when_its_controller_is_ours(name, controller, expected):
    gc = (f"apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {name}}}\n"
          f"spec: {{controllerName: {controller}}}\n---\n")
    st = status_of(gc, kind="GatewayClass", name=name, ns="")
    if expected is None:
        assert st is None
    else:
        assert (st["conditions"][0]["status"], st["conditions"][0]["reason"]) == expected


def test_grpc_route_needs_a_grant_for_grpc_routes_not_http_routes():
    text = route(kind="GRPCRoute", backends="[{name: db, namespace: other, port: 5432}]")
    entry = status_of(text, GRANT, kind="GRPCRoute")["parents"][0]     # GRANT opens other to HTTPRoutes only
    c = next(c for c in entry["conditions"] if c["type"] == "ResolvedRefs")
    assert (c["status"], c["reason"]) == ("False", "RefNotPermitted") and "GRPCRoutes of namespace mesh" in c["message"]
    grpc_grant = GRANT.replace("kind: HTTPRoute", "kind: GRPCRoute")
    entry = status_of(text, grpc_grant, kind="GRPCRoute")["parents"][0]
    assert conditions(entry)["ResolvedRefs"] == ("True", "ResolvedRefs")


def _listeners(st):
    return [(x["name"], x["supportedKinds"], x["attachedRoutes"],
             {c["type"]: (c["status"], c["reason"], c["observedGeneration"], c["lastTransitionTime"])
              for c in x["conditions"]}) for x in st["listeners"]]


def test_gateway_listeners_status_follows_programmed_and_keeps_transition_times():
    pending = status_of("", kind="Gateway", name="waypoint", generation=3)
    assert _listeners(pending) == [("mesh", [], 0, {
        "Accepted": ("True", "Accepted", 3, NOW), "Programmed": ("False", "Pending", 3, NOW),
        "ResolvedRefs": ("True", "ResolvedRefs", 3, NOW), "Conflicted": ("False", "NoConflicts", 3, NOW)})]
    ready = status_of("", REPLICA, kind="Gateway", name="waypoint", served_status=pending, now=LATER, generation=3)
    assert _listeners(ready) == [("mesh", [], 0, {
        "Accepted": ("True", "Accepted", 3, NOW), "Programmed": ("True", "Programmed", 3, LATER),
        "ResolvedRefs": ("True", "ResolvedRefs", 3, NOW), "Conflicted": ("False", "NoConflicts", 3, NOW)})]


def test_an_invalid_waypoint_gateway_reports_its_listeners_not_accepted():
    gw = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bad, namespace: mesh}\n"
          "spec: {gatewayClassName: trellis-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}\n---\n")
    resources, errors = world(gw)
    raw = yaml.safe_load(gw.split("---")[0])
    st = new_status(raw, resources, problems_by_object(errors), NOW)
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]} == {
        "Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "Invalid")}
    [(name, kinds, attached, conds)] = _listeners(st)
    assert (name, kinds, attached) == ("http", [], 0)
    assert conds["Accepted"][:2] == ("False", "UnsupportedProtocol") and conds["Programmed"][:2] == ("False", "Invalid")
