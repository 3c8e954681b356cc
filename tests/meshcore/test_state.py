import json

from meshcore.resources import parse_documents
from meshcore.state import State

from zt_helpers import mesh, pol, rule, wl


def test_indexes():
    s = mesh()
    assert s.workload_by_address("10.244.1.3").uid == "default/web-1"
    assert s.workload_by_uid("legacy/old").address == "10.244.2.9"
    assert s.service_by_vip("10.96.0.10", 443).key == "default/web"
    assert s.service_by_vip("10.96.0.10", 8080) is None
    assert [w.uid for w in s.endpoints(s.service_by_vip("10.96.0.10", 80))] == ["default/web-1", "default/web-2"]
    assert s.identity_of(s.workload_by_uid("shop/other-ns")) == "spiffe://cluster.local/ns/shop/sa/cart"


def test_dump_is_json_and_complete():
    d = json.loads(json.dumps(mesh().dump()))
    assert {w["uid"] for w in d["workloads"]} >= {"default/client", "legacy/old"}
    web = next(x for x in d["services"] if x["name"] == "default/web")
    assert web["endpoints"] == ["default/web-1", "default/web-2"]
    old = next(w for w in d["workloads"] if w["uid"] == "legacy/old")
    assert old["protocol"] == "TCP"
    assert d["enrolledNamespaces"] == ["default", "shop"]


def test_duplicate_address_is_a_warning_not_a_crash():
    s = State(workloads=[wl("a", "10.0.0.1"), wl("b", "10.0.0.1")])
    assert s.workload_by_address("10.0.0.1").uid == "default/a"
    assert "share address 10.0.0.1" in s.warnings[0]


def test_policy_attachment():
    base = mesh()
    web1 = base.workload_by_uid("default/web-1")
    policies = [
        pol("ns-wide"),
        pol("by-selector", selector={"app": "web"}),
        pol("other-selector", selector={"app": "db"}),
        pol("by-service", refs=[("Service", "web")]),
        pol("by-other-service", refs=[("Service", "db")]),
        pol("by-namespace", refs=[("Namespace", "default")]),
        pol("other-ns", ns="shop"),
        pol("mesh-wide", ns="trellis-system"),
        pol("root-selector", ns="trellis-system", selector={"app": "web"}),
    ]
    s = State(workloads=base.workloads, services=base.services, policies=policies)
    got = {p.key for p in s.policies_for(web1)}
    assert got == {"default/ns-wide", "default/by-selector", "default/by-service", "default/by-namespace",
                   "trellis-system/mesh-wide", "trellis-system/root-selector"}
    other = s.workload_by_uid("shop/other-ns")
    assert {p.key for p in s.policies_for(other)} == {"shop/other-ns", "trellis-system/mesh-wide",
                                                     "trellis-system/root-selector"}


STATE_YAML = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web, namespace: default}
spec: {address: 10.0.0.2, serviceAccount: web-sa, labels: {app: web}, node: n1, networkNamespace: trellis-n1-default-web}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: old, namespace: legacy}
spec: {address: 10.0.0.3, node: n1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {port: 81}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {namespaces: [legacy], notPrincipals: [x]}}]
      to: [{operation: {ports: [8080], methods: [GET]}}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-ref, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: trellis-waypoint}
"""


def test_from_resources_indexes_the_typed_resource_model():
    loaded = parse_documents(STATE_YAML, "state.yaml")
    assert loaded.errors == []
    s = State.from_resources({r.key: r for r in loaded.resources}, version=9)
    web = s.workload_by_uid("default/web")
    assert web.in_mesh and web.identity == "spiffe://cluster.local/ns/default/sa/web-sa"
    assert web.network_namespace == "trellis-n1-default-web"
    old = s.workload_by_uid("legacy/old")
    assert not old.in_mesh and old.service_account == "default"
    svc = s.service_by_vip("10.96.0.1", 81)
    assert svc.port(80).target_port == 8080 and svc.port(81).target_port == 81 and svc.port(80).name == "http"
    deny = next(p for p in s.policies if p.name == "deny-legacy")
    assert deny.action == "DENY" and deny.selector == (("app", "web"),)
    assert deny.rules[0].from_[0].namespaces == ("legacy",) and deny.rules[0].from_[0].not_principals == ("x",)
    assert deny.rules[0].to[0].ports == (8080,) and deny.rules[0].to[0].has_l7
    assert {p.name for p in s.policies_for(web)} == {"deny-legacy", "by-ref"}
    assert s.dump()["version"] == 9 and s.enrolled_namespaces == {"default"}


MESH_YAML = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-1, namespace: default}
spec: {address: 10.244.1.3, labels: {app: web}, serviceAccount: web, node: node1}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: client, namespace: default}
spec: {address: 10.244.1.2, labels: {app: client}, serviceAccount: client, node: node1}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: old, namespace: legacy}
spec: {address: 10.244.2.9, labels: {app: old}, node: node2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {ports: [8080]}}]
"""


def test_state_from_the_real_resource_model():
    from meshcore.resources import parse_documents
    from meshcore import authz
    from ztunnel import route

    result = parse_documents(MESH_YAML, "mesh.yaml")
    assert not result.errors, [str(e) for e in result.errors]
    s = State.from_resources({r.key: r for r in result.resources}, version=3)
    assert not s.warnings
    client = s.workload_by_uid("default/client")
    r = route.decide(s, client, ("10.96.0.10", 80))
    assert isinstance(r, route.Hbone) and r.authority == "10.244.1.3:8080"
    assert r.expected_identity == "spiffe://cluster.local/ns/default/sa/web"
    assert isinstance(route.decide(s, client, ("10.244.2.9", 80)), route.Plaintext)
    web = s.workload_by_uid("default/web-1")
    policies = s.policies_for(web)
    assert [p.key for p in policies] == ["default/deny-client"]
    assert isinstance(authz.evaluate(policies, client.identity, 8080), authz.Deny)
    assert isinstance(authz.evaluate(policies, "spiffe://cluster.local/ns/default/sa/other", 8080), authz.Allow)
    assert isinstance(authz.evaluate(policies, client.identity, 9090), authz.Allow)


def _state(docs: str) -> State:
    loaded = parse_documents(docs, "shop.yaml")
    assert not loaded.errors, [str(e) for e in loaded.errors]
    return State.from_resources(loaded.resources)


def test_services_carry_the_waypoint_the_mesh_rules_give_them():
    docs = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient, trellis.dev/use-waypoint: shop-wp}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.30, selector: {app: cart}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop, labels: {trellis.dev/use-waypoint: pay-wp}}
spec: {clusterIP: 10.96.0.31, selector: {app: pay}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: health, namespace: shop, labels: {trellis.dev/use-waypoint: none}}
spec: {clusterIP: 10.96.0.32, selector: {app: health}, ports: [{port: 80}]}
"""
    s = _state(docs)
    got = {svc["name"]: svc["waypoint"] for svc in s.dump()["services"]}
    assert got == {"shop/cart": "shop-wp", "shop/pay": "pay-wp", "shop/health": None}


def test_workloads_carry_their_waypoint_for_traffic_to_their_own_address():
    docs = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient, trellis.dev/use-waypoint: shop-wp}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: cart-1, namespace: shop}
spec: {address: 10.244.1.5, node: n1, labels: {app: cart}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: cart-2, namespace: shop, labels: {trellis.dev/use-waypoint: none}}
spec: {address: 10.244.1.6, node: n1, labels: {app: cart}}
"""
    s = _state(docs)
    assert (s.workload_by_uid("shop/cart-1").waypoint, s.workload_by_uid("shop/cart-2").waypoint) == ("shop-wp", None)


def test_headless_services_index_endpoints_and_policies_but_no_vip():
    docs = """
apiVersion: v1
kind: Namespace
metadata: {name: db, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: pg-0, namespace: db}
spec: {address: 10.244.1.7, node: n1, labels: {app: pg}}
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: db}
spec: {clusterIP: None, selector: {app: pg}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: pg-bare, namespace: db}
spec: {clusterIP: None, selector: {app: pg}}
---
apiVersion: v1
kind: Service
metadata: {name: upstream, namespace: db}
spec: {type: ExternalName, externalName: pg.example.com, selector: {app: pg}, ports: [{port: 5432}]}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: pg-only-app, namespace: db}
spec:
  targetRefs: [{kind: Service, name: pg}]
  rules: [{from: [{source: {namespaces: [app]}}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-external, namespace: db}
spec:
  targetRefs: [{kind: Service, name: upstream}]
"""
    s = _state(docs)
    assert s.warnings == []
    pg = next(x for x in s.services if x.key == "db/pg")
    assert pg.cluster_ip is None and pg.headless
    # no VIP entry at all: not under None, not under "None"
    assert s._vips == {} and s._by_vip == {}
    assert s.service_by_vip("None", 5432) is None and s.service_at_ip("None") is None
    pod = s.workload_by_uid("db/pg-0")
    assert [w.uid for w in s.endpoints(pg)] == ["db/pg-0"]
    assert {x.key for x in s.services_of(pod)} == {"db/pg", "db/pg-bare"}   # ExternalName: not in the state
    # Istio ambient: a headless Service's pods are its endpoints for targetRefs policies
    assert [p.key for p in s.policies_for(pod)] == ["db/pg-only-app"]
    dumped = {x["name"]: x for x in json.loads(json.dumps(s.dump()))["services"]}
    assert set(dumped) == {"db/pg", "db/pg-bare"}
    assert dumped["db/pg"]["clusterIP"] == "None" and dumped["db/pg"]["endpoints"] == ["db/pg-0"]
