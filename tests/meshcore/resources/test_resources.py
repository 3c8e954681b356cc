"""The resource model: what loads, and the exact error for what does not."""
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from meshcore.resources import (ResourceError, ResourceInvalid, check_references, from_dict, load_dir,
                                matches, parse_documents)
from meshcore.mesh import principal_matches

ROOT = Path(__file__).resolve().parents[3]

SVC = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


@pytest.mark.parametrize("lab", ["examples/lab/config", "tests/e2e/lab/config"])
def test_shipped_configs_load_clean(lab):
    res = load_dir(ROOT / lab)
    assert res.errors == []
    assert {r.kind for r in res.resources} >= {"Namespace", "Service", "PeerAuthentication"}


def test_typed_specs():
    (svc,) = parse_documents(SVC, "svc.yaml").resources
    assert svc.key == ("Service", "default", "web")
    assert str(svc.spec.cluster_ip) == "10.96.0.10"
    assert svc.spec.ports[0].target_port == 8080
    (defaulted,) = parse_documents(SVC.replace(", targetPort: 8080", ""), "svc.yaml").resources
    assert defaulted.spec.ports[0].target_port == 80
    assert defaulted.spec.ports[0].app_protocol is None
    for value in ("kubernetes.io/h2c", "grpc", "example.com/my-protocol_v2"):
        (declared,) = parse_documents(SVC.replace("targetPort: 8080", f"targetPort: 8080, appProtocol: {value}"),
                                      "svc.yaml").resources
        assert declared.spec.ports[0].app_protocol == value


BAD = [
    ("apiVersion: v1\nkind: Servise\nmetadata: {name: a}\nspec: {}\n", "", "unknown kind v1 Servise"),
    (SVC.replace("selector:", "selektor:"), "spec.selektor", "unknown field (allowed: clusterIP, selector, ports, "),
    (SVC.replace("port: 80,", "port: 70000,"), "spec.ports[0].port", "must be an integer 1-65535, got 70000"),
    (SVC.replace("10.96.0.10", "10.96.0.300"), "spec.clusterIP", "must be an IPv4 or IPv6 address, got '10.96.0.300'"),
    (SVC.replace("name: web,", "name: Web_1,"), "metadata.name", "'Web_1' is not a valid name"),
    (SVC.replace("  clusterIP: 10.96.0.10\n", ""), "spec.clusterIP", "is required: outside a cluster nothing allocates"),
    (SVC.replace("10.96.0.10", "None").replace("spec:\n", "spec:\n  type: NodePort\n"), "spec.clusterIP",
     "may not be None for NodePort Services"),
    (SVC.replace("spec:\n", "spec:\n  type: ExternalName\n  externalName: db.example.com\n"), "spec.clusterIP",
     "must be empty for ExternalName Services"),
    (SVC.replace("  clusterIP: 10.96.0.10\n", "  type: ExternalName\n"), "spec.externalName",
     "is required for ExternalName Services"),
    (SVC.replace("spec:\n", "spec:\n  externalName: db.example.com\n"), "spec.externalName",
     "is only for type ExternalName (this is ClusterIP)"),
    (SVC.replace("  clusterIP: 10.96.0.10\n", "  type: ExternalName\n  externalName: DB_host\n"), "spec.externalName",
     "'DB_host' is not a valid DNS name"),
    (SVC.replace("spec:\n", "spec:\n  type: Headless\n"), "spec.type",
     "must be one of ClusterIP, NodePort, LoadBalancer, ExternalName, got 'Headless'"),
    (SVC.replace("  ports: [{name: http, port: 80, targetPort: 8080}]\n", ""), "spec.ports",
     "is required (only headless and ExternalName Services may have none)"),
    (SVC.replace("{app: web}", "{app: [web]}"), "spec.selector.app", "['web'] is not a valid label value"),
    (SVC + "statuss: {}\n", "statuss", "unknown field (allowed: apiVersion, kind, metadata, spec, status)"),
    ("apiVersion: trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 10.0.0.1, node: n}\n"
     "status: {}\n", "status", "unknown field (allowed: apiVersion, kind, metadata, spec)"),  # our kinds: strict
    (SVC.replace("targetPort: 8080", "targetPort: Http"), "spec.ports[0].targetPort", "is neither a port number"),
    (SVC.replace("targetPort: 8080", "targetPort: 8080, appProtocol: 'h2 c'"), "spec.ports[0].appProtocol",
     "'h2 c' is not a valid appProtocol"),
    (SVC.replace("targetPort: 8080", "targetPort: 8080, appProtocol: Kubernetes.IO/h2c"), "spec.ports[0].appProtocol",
     "is not a valid appProtocol"),
    (SVC.replace("targetPort: 8080", "targetPort: 8080, apProtocol: http"), "spec.ports[0].apProtocol",
     "unknown field (allowed: name, port, targetPort, protocol, appProtocol, nodePort)"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, imagee: x}]}\n",
     "spec.containers[0].imagee", "unknown field (allowed: name, ports, args, "),
    ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv5\n",
     "addressType", "must be one of IPv4, IPv6, FQDN"),
    ("apiVersion: trellis.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: strict}}\n",
     "spec.mtls.mode", "must be one of STRICT, PERMISSIVE, UNSET, got 'strict'"),
    ("apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: ALLOW\n"
     "  rules: [{from: [{source: {principals: ['spiffe://cluster.local/sa/x']}}]}]\n",
     "spec.rules[0].from[0].source.principals[0]", "is not a workload SPIFFE ID"),
    ("apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: MAYBE}\n",
     "spec.action", "must be one of ALLOW, DENY"),
    ("apiVersion: trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 10.0.0.1}\n",
     "spec.node", "is required"),
]


@pytest.mark.parametrize("text,path,message", BAD)
def test_bad_documents_name_file_object_and_field(text, path, message):
    res = parse_documents(text, "cfg/x.yaml")
    assert res.resources == []
    assert len(res.errors) >= 1
    err = res.errors[0]
    assert err.source == "cfg/x.yaml" and err.path == path and message in err.message, str(err)
    assert str(err).startswith("cfg/x.yaml: ")


def test_error_string_shape():
    (err,) = parse_documents(SVC.replace("port: 80,", "port: 0,"), "config/svc.yaml").errors
    assert str(err) == "config/svc.yaml: Service default/web: spec.ports[0].port: must be an integer 1-65535, got 0"


def test_malformed_yaml_names_the_line():
    (err,) = parse_documents("kind: Service\nmetadata: {name: x\n  spec: [\n", "bad.yaml").errors
    assert err.source == "bad.yaml" and "malformed YAML: line 3" in err.message


def test_duplicate_keys_are_an_error_not_a_silent_overwrite():
    (err,) = parse_documents(SVC + "kind: Service\n", "d.yaml").errors
    assert "duplicate key 'kind'" in err.message


def test_a_bad_file_loses_nothing_from_the_others(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC)
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\nkind: [\n")
    (tmp_path / "c.yaml").write_text(SVC.replace("name: web,", "name: web2,").replace("port: 80,", "port: -1,"))
    res = load_dir(tmp_path)
    assert {r.key for r in res.resources} == {("Service", "default", "web")}
    assert {e.source.rsplit("/", 1)[1] for e in res.errors} == {"b.yaml", "c.yaml"}


def test_duplicate_objects_name_both_files(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC)
    (tmp_path / "b.yaml").write_text(SVC)
    res = load_dir(tmp_path)
    assert len(res.resources) == 1
    (err,) = res.errors
    assert err.source.endswith("b.yaml") and "duplicate of the object in" in err.message and "a.yaml" in err.message


HEADLESS = SVC.replace("10.96.0.10", "None")
EXTERNAL = """apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {type: ExternalName, externalName: db.example.com., ports: [{port: 5432}]}
"""


def test_headless_and_external_name_services_load_as_kubernetes_accepts_them():
    (svc,) = parse_documents(HEADLESS, "h.yaml").resources
    assert svc.spec.cluster_ip is None and svc.spec.headless and svc.spec.type == "ClusterIP"
    assert svc.spec.cluster_ip_text == "None" and svc.spec.selector == {"app": "web"}
    # a StatefulSet's governing Service often lists no port at all
    (bare,) = parse_documents(HEADLESS.replace("  ports: [{name: http, port: 80, targetPort: 8080}]\n", ""),
                              "h.yaml").resources
    assert bare.spec.headless and bare.spec.ports == ()
    (ext,) = parse_documents(EXTERNAL, "e.yaml").resources
    assert ext.spec.type == "ExternalName" and ext.spec.external_name == "db.example.com."
    assert ext.spec.cluster_ip is None and not ext.spec.headless and ext.spec.cluster_ip_text == "<none>"
    (no_ports,) = parse_documents(EXTERNAL.replace(", ports: [{port: 5432}]", ""), "e.yaml").resources
    assert no_ports.spec.ports == ()
    (ip,) = parse_documents(SVC, "s.yaml").resources
    assert ip.spec.cluster_ip_text == "10.96.0.10" and not ip.spec.headless
    again = from_dict(svc.to_dict())
    assert again == svc and again.spec == svc.spec


def test_services_without_an_address_never_conflict():
    docs = "---\n".join([HEADLESS, HEADLESS.replace("name: web,", "name: web2,"), EXTERNAL,
                         EXTERNAL.replace("name: db,", "name: db2,")])
    res = parse_documents(docs, "s.yaml")
    assert res.errors == [] and len(res.resources) == 4
    assert check_references(res.resources) == []


def test_cross_object_conflicts():
    res = parse_documents(SVC + "---\n" + SVC.replace("name: web,", "name: other,"), "s.yaml")
    (err,) = check_references(res.resources)
    assert err.path == "spec.clusterIP" and "already used by Service default/web" in err.message


def test_round_trip():
    for r in load_dir(ROOT / "tests/e2e/lab/config").resources + parse_documents(SVC, "s").resources:
        again = from_dict(r.to_dict())
        assert again == r and again.spec == r.spec


def test_from_dict_raises_with_all_errors():
    with pytest.raises(ResourceInvalid) as exc:
        from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "bogus": 1}, "spec": {"ports": []}})
    paths = {e.path for e in exc.value.errors}
    assert paths == {"metadata.bogus", "spec.clusterIP", "spec.ports"}


def test_selectors_and_principals():
    assert matches({"app": "web"}, {"app": "web", "v": "1"}) and matches(None, {}) and not matches({"a": "b"}, {})
    p = "spiffe://cluster.local/ns/default/sa/sleep"
    assert principal_matches([p], p) and principal_matches(["*"], p)
    assert principal_matches(["spiffe://cluster.local/ns/default/*"], p) and principal_matches(["*/sa/sleep"], p)
    assert principal_matches(["cluster.local/ns/default/sa/sleep"], p), "Istio writes principals without the scheme"
    assert not principal_matches(["*/sa/web"], p) and not principal_matches(["*"], None)


yamlish = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["v1", "Service", "trellis.dev/v1alpha1", "WorkloadEntry", "AuthorizationPolicy", "10.0.0.1"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "ports", "port", "rules", "from",
                         "source", "principals", "selector", "matchLabels", "clusterIP", "address", "node", "x"]),
        kids, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(yamlish)
def test_garbage_only_ever_yields_resource_errors(doc):
    res = parse_documents(yaml.safe_dump(doc), "fuzz.yaml")
    assert all(isinstance(e, ResourceError) for e in res.errors)
    assert len(res.resources) + len(res.errors) >= (0 if doc is None else 1)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_garbage_text_only_ever_yields_resource_errors(text):
    res = parse_documents(text, "fuzz.yaml")
    assert all(isinstance(e, ResourceError) for e in res.errors)


# What `kubectl get -o yaml` returns for a Helm-installed app: every field the API server
# and the usual charts set, most of which the mesh does not read.
REAL_MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  uid: 6f1c2a5e-0000-4000-8000-000000000001
  resourceVersion: "412"
  creationTimestamp: "2026-12-01T10:00:00Z"
  labels: {kubernetes.io/metadata.name: shop, trellis.dev/dataplane-mode: ambient}
spec: {finalizers: [kubernetes]}
status: {phase: Active}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {meta.helm.sh/release-name: shop, meta.helm.sh/release-namespace: shop}
  labels: {app.kubernetes.io/managed-by: Helm}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  internalTrafficPolicy: Cluster
  sessionAffinity: None
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}
  - {name: dns, port: 53, targetPort: 53, protocol: UDP}
status: {loadBalancer: {}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c-x2x9z
  namespace: shop
  generateName: web-7d4b9c-
  labels: {app: web, pod-template-hash: 7d4b9c}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c, uid: u, controller: true}]
spec:
  serviceAccountName: web
  serviceAccount: web
  nodeName: node1
  dnsPolicy: ClusterFirst
  restartPolicy: Always
  schedulerName: default-scheduler
  terminationGracePeriodSeconds: 30
  enableServiceLinks: true
  priority: 0
  preemptionPolicy: PreemptLowerPriority
  securityContext: {}
  tolerations: [{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 300}]
  volumes: [{name: kube-api-access, projected: {sources: [{serviceAccountToken: {path: token}}]}}]
  containers:
  - name: app
    image: nginx:1.27
    imagePullPolicy: IfNotPresent
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
    readinessProbe: {httpGet: {path: /, port: http}}
    resources: {requests: {cpu: 10m}}
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
    volumeMounts: [{name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}]
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}]
  hostIP: 10.0.0.11
  qosClass: Burstable
  conditions: [{type: Ready, status: "True"}]
  containerStatuses: [{name: app, ready: true, restartCount: 0}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abcde, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node1
  targetRef: {kind: Pod, name: web-7d4b9c-x2x9z, namespace: shop}
ports: [{name: http, port: 8080, protocol: TCP, appProtocol: http}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
automountServiceAccountToken: false
"""


def test_real_kubernetes_manifests_load_and_keep_what_the_mesh_reads():
    res = parse_documents(REAL_MANIFESTS, "cluster.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    by_kind = {r.kind: r for r in res.resources}
    svc = by_kind["Service"].spec
    assert [(p.port, p.target_port, p.protocol) for p in svc.ports] == [(80, "http", "TCP"), (53, 53, "UDP")]
    assert svc.ports[0].target_on({"http": 8080}) == 8080 and svc.ports[0].target_on({}) is None
    pod = by_kind["Pod"].spec
    assert (pod.node_name, pod.service_account, pod.container_ports) == ("node1", "web", {"http": 8080})
    assert (str(pod.status.pod_ip), pod.status.phase) == ("10.244.1.5", "Running")
    assert by_kind["EndpointSlice"].spec.endpoints[0]["addresses"] == ("10.244.1.5",)
    assert by_kind["Namespace"].labels["trellis.dev/dataplane-mode"] == "ambient"
