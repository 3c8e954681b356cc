"""The cluster the Kubernetes source tests read: its objects, a kubeconfig for the
stand-in API server, and a kubeadm-style PKI for HTTPS and client-certificate auth."""
import copy

import yaml

from trellis.lab import kubeworld
from trellis.lab.apiserver import ApiServerStandIn

TOKEN = "s3cr3t-token"
WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {meta.helm.sh/release-name: shop}}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node1
  serviceAccountName: web
  containers: [{name: app, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: nginx}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: trellis-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 80}]}]}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec: {address: 10.0.5.1, node: node2, serviceAccount: web, labels: {app: web}, ports: {http: 8080}}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [legacy]}}]}]}
---
apiVersion: trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: trellis-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: typo, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80, targetPort: Http_Port}]}
"""
DOCS = [d for d in yaml.safe_load_all(WORLD) if d]


def kubeconfig(tmp_path, port, token=TOKEN, user=None):
    return kubeworld.kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", token=token, user=user)


def world(**kw) -> ApiServerStandIn:
    standin = ApiServerStandIn(token=TOKEN, **kw)
    for d in DOCS:
        standin.put(copy.deepcopy(d))
    return standin


async def synced_source(nursery, tmp_path, standin, **source_options):
    """Serve `standin`, run a KubernetesSource on it until every collection was listed;
    returns (the KubeApi, the store). The caller closes the api."""
    import trio
    from controlplane.sources.kubernetes import KubernetesSource
    from controlplane.store import VersionedStore
    from kubewatch.client import KubeApi, load_config
    port = await nursery.start(standin.serve)
    api = KubeApi(load_config(kubeconfig(tmp_path, port)))
    store = VersionedStore(first_version=1)
    with trio.fail_after(20):
        await nursery.start(KubernetesSource(api, store, **source_options).run)
    return api, store


def cluster_pki(d):
    """A cluster CA, the API server's certificate for 127.0.0.1 and a client certificate,
    as kubeadm lays them out (PEM files); the lab makes its own the same way."""
    return kubeworld.cluster_pki(d, ["127.0.0.1"])
