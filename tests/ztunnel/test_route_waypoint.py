"""The route decision with waypoints (pure), from the resource model as users write it."""
import pytest

from meshcore.resources import parse_documents
from meshcore.state import State, waypoints
from ztunnel import route
from ztunnel.route import Hbone, Plaintext, Refuse

TD = "spiffe://cluster.local"
WP_ID = f"{TD}/ns/shop/sa/waypoint"

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient, trellis.dev/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other-class, namespace: shop}
spec: {gatewayClassName: istio}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {address: 10.1.0.10, serviceAccount: waypoint, node: n1}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {address: 10.1.0.11, serviceAccount: waypoint, node: n2}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: cart-1, namespace: shop}
spec: {address: 10.1.0.20, serviceAccount: cart, labels: {app: cart}, node: n1, ports: {http: 8080}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: pay-1, namespace: shop, labels: {trellis.dev/use-waypoint: none}}
spec: {address: 10.1.0.30, serviceAccount: pay, labels: {app: pay}, node: n1}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: api-1, namespace: plain}
spec: {address: 10.2.0.20, serviceAccount: api, labels: {app: api}, node: n1}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: db-1, namespace: plain}
spec: {address: 10.2.0.30, serviceAccount: db, labels: {app: db}, node: n2}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: client, namespace: plain}
spec: {address: 10.2.0.2, serviceAccount: client, node: n1}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: cart}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop, labels: {trellis.dev/use-waypoint: none}}
spec: {clusterIP: 10.96.1.2, selector: {app: pay}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: plain, labels: {trellis.dev/use-waypoint: missing}}
spec: {clusterIP: 10.96.2.1, selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: plain}
spec: {clusterIP: 10.96.2.2, selector: {app: db}, ports: [{port: 5432}]}
"""


def state(extra: str = "", drop: tuple[str, ...] = ()) -> State:
    loaded = parse_documents(BASE + extra, "mesh.yaml")
    assert loaded.errors == []
    return State.from_resources([r for r in loaded.resources if r.name not in drop])


S = state()
CLIENT = S.workload_by_uid("plain/client")
WAYPOINT_0 = S.workload_by_uid("shop/waypoint-0")

CASES = [
    # namespace label: the Service's VIP goes to a waypoint replica, authority kept
    (CLIENT, ("10.96.1.1", 80), Hbone, dict(endpoint_ip="10.1.0.10", hbone_address=("10.1.0.10", 15008),
                                          authority="10.96.1.1:80", expected_identity=WP_ID,
                                          waypoint="shop/waypoint", service="shop/cart")),
    # a Service's own `none` opts out of the namespace's waypoint: L4 path to the endpoint
    (CLIENT, ("10.96.1.2", 80), Hbone, dict(endpoint_ip="10.1.0.30", authority="10.1.0.30:8080",
                                          expected_identity=f"{TD}/ns/shop/sa/pay", waypoint=None)),
    # no waypoint anywhere: unchanged L4 path
    (CLIENT, ("10.96.2.2", 5432), Hbone, dict(endpoint_ip="10.2.0.30", authority="10.2.0.30:5432",
                                            expected_identity=f"{TD}/ns/plain/sa/db", waypoint=None, original=None)),
    (CLIENT, ("10.2.0.30", 5432), Hbone, dict(endpoint_ip="10.2.0.30", waypoint=None)),
    # a Service label naming a waypoint that does not exist: refused, fail closed
    (CLIENT, ("10.96.2.1", 80), Refuse, dict(service="plain/api")),
    # bypass rule: a pod IP behind the waypoint (namespace label) goes through it
    (CLIENT, ("10.1.0.20", 8080), Hbone, dict(endpoint_ip="10.1.0.10", authority="10.1.0.20:8080",
                                            expected_identity=WP_ID, waypoint="shop/waypoint", service=None)),
    # a pod that opted out and backs only an opted-out Service: direct
    (CLIENT, ("10.1.0.30", 8080), Hbone, dict(endpoint_ip="10.1.0.30", waypoint=None)),
    # a pod backing a Service whose waypoint is missing: refused too (no way around the label)
    (CLIENT, ("10.2.0.20", 8080), Refuse, dict()),
    # the waypoint's own replicas go direct: to a VIP, to a pod IP (no loop)
    (WAYPOINT_0, ("10.96.1.1", 80), Hbone, dict(endpoint_ip="10.1.0.20", authority="10.1.0.20:8080",
                                              expected_identity=f"{TD}/ns/shop/sa/cart", waypoint=None)),
    (WAYPOINT_0, ("10.1.0.20", 8080), Hbone, dict(endpoint_ip="10.1.0.20", waypoint=None)),
    # and dialling a waypoint replica itself never routes through a waypoint
    (CLIENT, ("10.1.0.11", 15008), Hbone, dict(endpoint_ip="10.1.0.11", waypoint=None)),
    # an unknown source (not in this node's view) still goes through the waypoint
    (None, ("10.96.1.1", 80), Hbone, dict(waypoint="shop/waypoint")),
]


@pytest.mark.parametrize("source,dst,kind,fields", CASES)
def test_decide_with_waypoints(source, dst, kind, fields):
    r = route.decide(S, source, dst, route.first)
    assert isinstance(r, kind), r
    for k, v in fields.items():
        assert getattr(r, k) == v, (k, r)


def test_missing_waypoint_reason_names_it_and_the_fix():
    r = route.decide(S, CLIENT, ("10.96.2.1", 80))
    assert "waypoint plain/missing does not exist" in r.reason and "trellis.dev/use-waypoint" in r.reason
    # a Gateway of another class is not a waypoint
    s = state("""
---
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: plain, labels: {trellis.dev/use-waypoint: other-class}}
spec: {clusterIP: 10.96.2.9, selector: {app: db}, ports: [{port: 80}]}
""")
    assert "plain/other-class does not exist" in route.decide(s, CLIENT, ("10.96.2.9", 80)).reason


def test_no_ready_replica_refuses_with_advice():
    s = state(drop=("waypoint-0", "waypoint-1"))
    r = route.decide(s, CLIENT, ("10.96.1.1", 80))
    assert isinstance(r, Refuse) and "waypoint shop/waypoint has no ready replica" in r.reason
    assert "trellis waypoint status -n shop" in r.reason
    # a replica outside the mesh still serves: a waypoint speaks HBONE itself (as Istio's)
    out = state("""
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: waypoint-x, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint,
           trellis.dev/dataplane-mode: none}}
spec: {address: 10.1.0.19, serviceAccount: waypoint, node: n1}
""", drop=("waypoint-0", "waypoint-1"))
    assert route.decide(out, CLIENT, ("10.96.1.1", 80)).endpoint_ip == "10.1.0.19"


# a waypoint of namespace plain (which has no use-waypoint label) with one replica
PLAIN_WP = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: plain}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: wp-0, namespace: plain}
spec: {address: 10.2.0.50, serviceAccount: wp-sa, node: n1, labels: {gateway.networking.k8s.io/gateway-name: wp}}
"""


def test_service_label_overrides_namespace_without_waypoint():
    # plain has no namespace label; a Service labelled with an existing waypoint uses it
    s = state(PLAIN_WP + """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: plain, labels: {trellis.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.2.5, selector: {app: db}, ports: [{port: 80, targetPort: 5432}]}
""")
    r = route.decide(s, CLIENT, ("10.96.2.5", 80))
    assert r.waypoint == "plain/wp" and r.endpoint_ip == "10.2.0.50" and r.authority == "10.96.2.5:80"
    assert r.expected_identity == f"{TD}/ns/plain/sa/wp-sa"   # the replica's own ServiceAccount
    # the pods behind it are now waypoint-fronted for pod-IP traffic as well
    assert route.decide(s, CLIENT, ("10.2.0.30", 5432)).waypoint == "plain/wp"
    # but db's own VIP (no waypoint) stays on the L4 path
    assert route.decide(s, CLIENT, ("10.96.2.2", 5432)).waypoint is None


def test_round_robin_over_replicas():
    rr = route.RoundRobin()
    got = [route.decide(S, CLIENT, ("10.96.1.1", 80), rr).endpoint_ip for _ in range(4)]
    assert got == ["10.1.0.10", "10.1.0.11", "10.1.0.10", "10.1.0.11"]
    # the Service's own counter is not the waypoint's
    assert route.decide(S, WAYPOINT_0, ("10.96.1.1", 80), rr).endpoint_ip == "10.1.0.20"


def test_resolve_and_accepted_sources():
    wp = waypoints.resolve(S, "shop", "waypoint")
    assert [w.uid for w in wp.replicas] == ["shop/waypoint-0", "shop/waypoint-1"]
    assert wp.identities == {WP_ID}
    cart = S.workload_by_uid("shop/cart-1")
    assert [w.uid for w in waypoints.accepted_sources(S, cart)] == ["shop/waypoint"]
    assert waypoints.accepted_sources(S, S.workload_by_uid("shop/pay-1")) == []
    assert waypoints.accepted_sources(S, WAYPOINT_0) == []   # a replica is never behind a waypoint
    assert WAYPOINT_0.waypoint is None and WAYPOINT_0.waypoint_of == "waypoint"
    # no replica yet: the Gateway's default ServiceAccount is what it will connect with
    empty = waypoints.resolve(state(drop=("waypoint-0", "waypoint-1")), "shop", "waypoint")
    assert empty.replicas == () and empty.identities == {WP_ID}
    assert S.dump()["waypoints"] == ["shop/waypoint"]


def test_policies_on_a_waypoint_fronted_service_are_left_to_the_waypoint_at_ztunnel():
    s = state("""
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: cart-l7, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: cart}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: pay-l7, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pay}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: cart-pods, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
""")
    cart, pay = s.workload_by_uid("shop/cart-1"), s.workload_by_uid("shop/pay-1")
    # the waypoint evaluates cart-l7; ztunnel keeps selector policies (fail closed for L7 rules)
    assert {p.name for p in s.policies_for(cart)} == {"cart-l7", "cart-pods"}
    assert {p.name for p in s.policies_for(cart, at_ztunnel=True)} == {"cart-pods"}
    # pay has no waypoint (opted out): its L7 policy stays at ztunnel, a deny of the connection
    assert {p.name for p in s.policies_for(pay, at_ztunnel=True)} == {"pay-l7"}


def _inbound_for(s, uid):
    from ztunnel.inbound import Inbound
    from ztunnel.inputs import ProxyInputs
    from ztunnel.metrics import Metrics
    from ztunnel.podinfo import PodInfo
    w = s.workload_by_uid(uid)
    inputs = ProxyInputs(state=lambda: s, certs=None, metrics=Metrics(), origdst_fd=lambda: None)
    return Inbound(PodInfo(w.namespace, w.name, w.address, w.service_account, -1), inputs), w, inputs.metrics


def test_inbound_accepts_only_the_waypoint_for_a_pod_behind_it():
    inbound, cart, metrics = _inbound_for(S, "shop/cart-1")
    assert inbound._bypass(inbound.view().fronts, WP_ID) is None
    why = inbound._bypass(inbound.view().fronts, f"{TD}/ns/plain/sa/client")
    assert "shop/cart-1 is behind waypoint shop/waypoint" in why and "sa/client" in why
    assert metrics.value("trellis_waypoint_bypass_refused_total", destination_workload="cart-1") == 1
    # a pod that opted out, or backs no waypoint-fronted Service, takes anyone
    inbound, pay, _ = _inbound_for(S, "shop/pay-1")
    assert inbound._bypass(inbound.view().fronts, f"{TD}/ns/plain/sa/client") is None
    # behind a waypoint that does not exist: no one, with the missing waypoint named
    inbound, api, _ = _inbound_for(S, "plain/api-1")
    for peer in (f"{TD}/ns/plain/sa/client", f"{TD}/ns/plain/sa/missing"):
        assert "waypoint plain/missing does not exist" in inbound._bypass(inbound.view().fronts, peer)


HEADLESS = """
---
apiVersion: v1
kind: Service
metadata: {name: db-pods, namespace: plain}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: plain}
spec: {type: ExternalName, externalName: db.example.com, ports: [{port: 5432}]}
"""


def test_headless_services_have_no_vip_and_their_pods_stay_on_the_pod_ip_path():
    s = state(HEADLESS)
    assert s.warnings == [] and "plain/ext" not in {x.key for x in s.services}   # ExternalName: ignored
    # pod IP: exactly as before (HBONE to the pod, no waypoint: plain has no use-waypoint label)
    r = route.decide(s, CLIENT, ("10.2.0.30", 5432))
    assert isinstance(r, Hbone) and r.endpoint_ip == "10.2.0.30" and r.waypoint is None
    assert r.expected_identity == f"{TD}/ns/plain/sa/db"
    # nothing owns an address the headless Service does not have: "None" is not a VIP
    assert isinstance(route.decide(s, CLIENT, ("None", 5432)), Plaintext)


def test_a_headless_service_with_a_waypoint_fronts_its_pods_for_pod_ip_traffic():
    # as a ClusterIP Service's label does (the bypass rule): its pods are behind the waypoint
    s = state(HEADLESS.replace("name: db-pods, namespace: plain}",
                               "name: db-pods, namespace: plain, labels: {trellis.dev/use-waypoint: wp}}") + PLAIN_WP)
    r = route.decide(s, CLIENT, ("10.2.0.30", 5432))
    assert r.waypoint == "plain/wp" and r.endpoint_ip == "10.2.0.50" and r.authority == "10.2.0.30:5432"
