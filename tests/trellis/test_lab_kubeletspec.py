"""The lab's Deployment controller and kubelet steps (trellis/lab/kubeletspec.py), on the
Deployment the control plane makes for a waypoint Gateway."""
import pytest

from controlplane.waypoints import Settings, desired
from trellis.lab import kubeletspec

GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "waypoint", "namespace": "shop", "uid": "g-1"},
           "spec": {"gatewayClassName": "trellis-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def deployment():
    dep = next(o for o in desired(GATEWAY, Settings(token_audience="aud")) if o["kind"] == "Deployment")
    dep["metadata"]["uid"] = "d-1"
    return dep


def test_replicaset_and_pod_are_chained_by_controller_owner_references():
    rs = kubeletspec.replicaset_for(deployment())
    h = kubeletspec.template_hash(deployment())
    assert rs["metadata"]["name"] == f"waypoint-{h}" and rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == h
    assert rs["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "waypoint",
                                                  "uid": "d-1", "controller": True, "blockOwnerDeletion": True}]
    rs["metadata"]["uid"] = "r-1"
    pod = kubeletspec.pod_for(rs, "waypoint-0", "node2", "10.244.2.9", uid="p-1")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" and pod["metadata"]["uid"] == "p-1"
    assert pod["spec"]["nodeName"] == "node2" and pod["spec"]["serviceAccountName"] == "waypoint"
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert pod["status"]["podIP"] == "10.244.2.9"
    # another template, another ReplicaSet (as the Deployment controller names them)
    other = deployment()
    other["spec"]["template"]["spec"]["containers"][0]["image"] = "trellis:next"
    assert kubeletspec.replicaset_for(other)["metadata"]["name"] != rs["metadata"]["name"]


def test_token_request_projected_files_and_argv(tmp_path):
    rs = kubeletspec.replicaset_for(deployment())
    rs["metadata"]["uid"] = "r-1"
    pod = kubeletspec.pod_for(rs, "waypoint-0", "node1", "10.244.1.9", uid="p-1")
    (source,) = kubeletspec.token_sources(pod)
    req = kubeletspec.token_request(pod, source)
    assert req["kind"] == "TokenRequest" and req["spec"] == {
        "audiences": ["aud"], "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "waypoint-0", "uid": "p-1"}}
    (vol,) = pod["spec"]["volumes"]
    with pytest.raises(kubeletspec.MissingSource, match='configmap "trellis-ca-root-cert" not found'):
        kubeletspec.projected_files(vol, "tok", {})
    with pytest.raises(kubeletspec.MissingSource, match="has no key root-cert.pem"):
        kubeletspec.projected_files(vol, "tok", {"trellis-ca-root-cert": {"data": {"other": "x"}}})
    files = kubeletspec.projected_files(vol, "tok", {"trellis-ca-root-cert": {"data": {"root-cert.pem": "ROOT"}}})
    assert files == {"token": "tok", "root-cert.pem": "ROOT"}
    argv = kubeletspec.container_argv(pod, {vol["name"]: tmp_path / "v"}, "/usr/bin/python3.11")
    assert argv[:3] == ["/usr/bin/python3.11", "-m", "waypoint"]
    assert argv[argv.index("--token-file") + 1] == str(tmp_path / "v" / "token")
    assert argv[argv.index("--ca-root-file") + 1] == str(tmp_path / "v" / "root-cert.pem")
    assert argv[argv.index("--namespace") + 1] == "shop"   # other arguments untouched
