"""Istio's mesh-wide waypoint policy: an AuthorizationPolicy in the root namespace whose
targetRef is the waypoints' GatewayClass applies at every waypoint; one elsewhere applies to
nothing (State says so in its warnings); a GatewayClass target naming another class, or in
another group, is refused naming the field."""
from meshcore.resources import ROOT_NAMESPACE, parse_documents
from meshcore.state import State
from waypoint.view import View

BASE = """apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient, trellis.dev/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: trellis-waypoint}
"""


def policy(namespace: str, name: str, target: str) -> str:
    return f"""---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  targetRefs: [{target}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]
"""


MESH_WIDE = "{group: gateway.networking.k8s.io, kind: GatewayClass, name: trellis-waypoint}"


def test_a_root_namespace_gatewayclass_policy_applies_at_the_waypoint_and_elsewhere_it_warns():
    loaded = parse_documents(BASE + policy(ROOT_NAMESPACE, "mesh-deny-admin", MESH_WIDE)
                             + policy("shop", "misplaced", MESH_WIDE), "p.yaml")
    assert loaded.errors == []
    view = View(loaded.resources, trust_domain="cluster.local", namespace="shop", gateway="waypoint")
    svc = view.service("shop", "web")
    assert [p.key for p in view.authz_policies(svc)] == [f"{ROOT_NAMESPACE}/mesh-deny-admin"]
    state = State.from_resources(loaded.resources)
    assert any(w.startswith("p.yaml: AuthorizationPolicy shop/misplaced: spec.targetRefs[0]: ") and "root namespace" in w
               for w in state.warnings), state.warnings
    assert not any("mesh-deny-admin" in w for w in state.warnings)


def test_a_gatewayclass_target_must_be_the_waypoints_class_in_its_group():
    bad = parse_documents(BASE + policy(ROOT_NAMESPACE, "other-class",
                                        "{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio}")
                          + policy(ROOT_NAMESPACE, "other-group", "{group: example.com, kind: GatewayClass, "
                                                                  "name: trellis-waypoint}"), "p.yaml")
    text = "\n".join(str(e) for e in bad.errors)
    assert len(bad.errors) == 2, text
    assert "spec.targetRefs[0].name" in text and "'trellis-waypoint'" in text and "'istio'" in text
    assert "spec.targetRefs[0].group" in text and "'example.com'" in text
