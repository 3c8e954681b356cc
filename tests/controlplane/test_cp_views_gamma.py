"""What a waypoint's view carries for GAMMA beyond its own namespace: consumer routes whose
parent is one of its Services, and the ReferenceGrants of its backends' namespaces; nodes get
neither grants nor GatewayClasses."""
from controlplane.views import node_view, waypoint_view
from meshcore.resources import parse_documents

CONFIG = """\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: other}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80, targetPort: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh}]
  rules: [{backendRefs: [{name: db, namespace: other, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: db, namespace: other}]
  rules: [{backendRefs: [{name: db, namespace: other, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: client}]
  to: [{group: "", kind: Service}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: unrelated, namespace: third}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: client}]
  to: [{group: "", kind: Service}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: trellis-waypoint}
spec: {controllerName: trellis.dev/waypoint-controller}
---
"""


def test_waypoint_view_has_consumer_routes_for_its_services_and_their_grants():
    res = parse_documents(CONFIG, "cfg.yaml")
    assert res.errors == []
    resources = {r.key: r for r in res.resources}
    view = waypoint_view(resources, "mesh", "waypoint")
    assert ("HTTPRoute", "client", "consumer") in view          # its parent is mesh/echo
    assert ("HTTPRoute", "client", "elsewhere") not in view     # other/db is not this waypoint's
    assert ("Service", "other", "db") in view                   # the consumer route's backend
    assert ("ReferenceGrant", "other", "g") in view             # what opens it
    assert ("ReferenceGrant", "third", "unrelated") not in view
    assert ("GatewayClass", "", "trellis-waypoint") not in view
    nodes = node_view(resources, "node1")
    assert not any(k[0] in ("ReferenceGrant", "GatewayClass") for k in nodes)
    assert ("HTTPRoute", "client", "consumer") in nodes
