"""A waypoint's view of a headless Service (no VIP): a tunnel to one of its pods' IPs is
that Service's with its policies; as a route's backend it balances over its pods; an
ExternalName backend is absent from the data path (the request gets the spec's 500)."""
from meshcore.resources import parse_documents
from waypoint.routing import Backend
from waypoint.view import View

RESOURCES = """apiVersion: v1
kind: Namespace
metadata: {name: db, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: db, labels: {trellis.dev/use-waypoint: waypoint}}
spec: {clusterIP: None, selector: {app: pg}, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: upstream, namespace: db}
spec: {type: ExternalName, externalName: pg.example.com, ports: [{port: 5432}]}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: pg-0, namespace: db}
spec: {address: 10.244.1.7, node: n1, labels: {app: pg}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: pg-1, namespace: db}
spec: {address: 10.244.2.7, node: n2, labels: {app: pg}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: db}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: pg-readers, namespace: db}
spec:
  targetRefs: [{kind: Service, name: pg}]
  rules: [{from: [{source: {namespaces: [app]}}]}]
"""


def test_a_waypoint_serves_a_headless_services_pods_by_pod_ip_with_its_policies():
    loaded = parse_documents(RESOURCES, "r.yaml")
    assert loaded.errors == []
    view = View(loaded.resources, trust_domain="cluster.local", namespace="db", gateway="waypoint")
    t = view.target("10.244.2.7", 5432)
    assert t.service.key == "db/pg" and t.workload.uid == "db/pg-1" and t.service.cluster_ip is None
    assert [p.key for p in view.target_policies(t)] == ["db/pg-readers"]
    assert view.target("None", 5432) is None   # no VIP to dial
    # as a backendRef: its pods are its endpoints
    assert sorted(e.address for e in view.endpoints(Backend("db", "pg", 5432))) == ["10.244.1.7", "10.244.2.7"]
    # ExternalName: not in the waypoint's data path at all
    assert view.service("db", "upstream") is None and view.endpoints(Backend("db", "upstream", 5432)) == []
    assert view.dump_routes() is not None   # /routes with a VIP-less Service does not crash
