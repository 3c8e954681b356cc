"""`trellis install` and `trellis uninstall` as a user runs them (a subprocess), against an
HTTPS stand-in for the API server that checks server-side apply's request shapes."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trellis.deploy import chart

from apiserver_standin import StandIn

TRELLIS = str(Path(sys.executable).parent / "trellis")


def run(*args, check=True):
    p = subprocess.run([TRELLIS, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def api(tmp_path):
    with StandIn(tmp_path) as s:
        s.config = s.kubeconfig(tmp_path / "kubeconfig")
        yield s


def test_dry_run_prints_what_install_would_apply():
    out = run("install", "--dry-run", "--set", "controlPlane.replicas=3").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[0] == chart.namespace_object("trellis-system")
    assert [d["kind"] for d in docs[1:]] == [o["kind"] for o in chart.render()]
    assert next(d for d in docs if d["kind"] == "Deployment")["spec"]["replicas"] == 3


def test_install_server_side_applies_every_object_in_order(api):
    out = run("install", "--kubeconfig", str(api.config), "--set", "image.tag=v2").stdout
    expected = [chart.namespace_object("trellis-system")] + chart.render({"image": {"tag": "v2"}})
    reqs = api.store.requests
    assert len(reqs) == len(expected) == len(out.splitlines())
    for r, obj in zip(reqs, expected):
        assert r.method == "PATCH"
        assert r.content_type == "application/apply-patch+yaml"
        assert r.query == {"fieldManager": "trellis", "force": "true"}
        assert r.body == obj
    paths = [r.path for r in reqs]
    assert paths[0] == "/api/v1/namespaces/trellis-system"
    assert "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/authorizationpolicies.trellis.dev" in paths
    assert "/apis/rbac.authorization.k8s.io/v1/clusterroles/trellis-controlplane" in paths
    assert "/apis/apps/v1/namespaces/trellis-system/daemonsets/trellis-node" in paths
    assert paths.index("/apis/apps/v1/namespaces/trellis-system/daemonsets/trellis-node") > \
        paths.index("/api/v1/namespaces/trellis-system/serviceaccounts/trellis-node")
    assert "daemonset/trellis-node -n trellis-system applied" in out
    # a second install is the same apply again: the server answers 200 instead of 201, nothing breaks
    run("install", "--kubeconfig", str(api.config), "--set", "image.tag=v2")
    assert len(api.store.objects) == len(expected)


def test_uninstall_deletes_what_install_created_but_keeps_the_crds(api):
    run("install", "--kubeconfig", str(api.config))
    installed = set(api.store.objects)
    api.store.requests.clear()
    out = run("uninstall", "--kubeconfig", str(api.config)).stdout
    assert {r.method for r in api.store.requests} == {"DELETE"}
    assert all(r.content_type == "application/json" and r.body["propagationPolicy"] == "Background"
               for r in api.store.requests)
    crds = {p for p in installed if "customresourcedefinitions" in p}
    crd_files = list((Path(__file__).resolve().parents[3] / "deploy/helm/trellis/crds").glob("*.yaml"))
    assert len(crds) == len(crd_files) >= 3 and set(api.store.objects) == crds
    # the namespace goes last, after everything in it
    assert api.store.requests[-1].path == "/api/v1/namespaces/trellis-system"
    assert "namespace/trellis-system deleted" in out.splitlines()[-1]
    out = run("uninstall", "--kubeconfig", str(api.config), "--delete-crds").stdout
    assert api.store.objects == {}
    assert "deployment/trellis-controlplane -n trellis-system absent" in out


def test_refusals_name_the_object_and_the_reason(api, tmp_path):
    path = "/apis/apps/v1/namespaces/trellis-system/deployments/trellis-controlplane"
    api.store.refuse[path] = (422, "Invalid", 'Deployment.apps "trellis-controlplane" is invalid: spec.replicas: Invalid value')
    p = run("install", "--kubeconfig", str(api.config), check=False)
    assert p.returncode == 1
    assert "Deployment trellis-system/trellis-controlplane: apply refused (422 Invalid): " \
           'Deployment.apps "trellis-controlplane" is invalid' in p.stderr
    bad = api.kubeconfig(tmp_path / "bad-token", token="wrong")
    p = run("uninstall", "--kubeconfig", str(bad), check=False)
    assert p.returncode == 1 and "delete refused (401 Unauthorized)" in p.stderr


def test_an_exec_plugin_kubeconfig_is_refused_clearly(tmp_path):
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                                   "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
                                   "users": [{"name": "u", "user": {"exec": {"command": "aws"}}}]}))
    p = run("install", "--kubeconfig", str(cfg), check=False)
    assert p.returncode == 1 and "exec/auth-provider plugin" in p.stderr


def test_the_standin_refuses_what_a_real_apiserver_refuses(api):
    """The stand-in is only worth its checks: a merge patch or an apply without a field
    manager is refused, as kube-apiserver does."""
    from trellis.deploy.apply import Client
    from trellis.deploy.kubeconfig import load
    c = Client(load(api.config))
    try:
        assert c.request("PATCH", "/api/v1/namespaces/x", b"{}", "application/merge-patch+json")[0] == 415
        assert c.request("PATCH", "/api/v1/namespaces/x", b"{}", "application/apply-patch+yaml")[0] == 422
        assert c.request("PATCH", "/api/v1/namespaces/x/services/y?fieldManager=t", b"{}",
                         "application/apply-patch+yaml")[0] == 404
    finally:
        c.close()
