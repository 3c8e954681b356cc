"""The cluster the Kubernetes source tests read: its objects, a kubeconfig for the
stand-in API server, and a kubeadm-style PKI for HTTPS and client-certificate auth."""
import copy
import datetime as dt
import ipaddress
import ssl

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import generate_key, key_pem
from kube_standin import ApiServerStandIn

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
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "me", "user": user or {"token": token}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}]}))
    return str(path)


def world(**kw) -> ApiServerStandIn:
    standin = ApiServerStandIn(token=TOKEN, **kw)
    for d in DOCS:
        standin.put(copy.deepcopy(d))
    return standin


def cluster_pki(d):
    """A cluster CA, the API server's certificate for 127.0.0.1 and a client certificate,
    as kubeadm lays them out (PEM files)."""

    def cert(subject, key, issuer, issuer_key, *, ca=False, san=None):
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
             .not_valid_after(now + dt.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, server_key, client_key = generate_key(), generate_key(), generate_key()
    files = {"ca.crt": cert("kubernetes", ca_key, "kubernetes", ca_key, ca=True),
             "apiserver.crt": cert("kube-apiserver", server_key, "kubernetes", ca_key,
                                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
             "apiserver.key": key_pem(server_key),
             "trellis.crt": cert("system:serviceaccount:trellis-system:controlplane", client_key, "kubernetes", ca_key),
             "trellis.key": key_pem(client_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "apiserver.crt", d / "apiserver.key")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
