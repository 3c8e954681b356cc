"""Waypoints in a cluster: the control plane's reconciler against the API-server stand-in
(real HTTP list/POST/PUT/DELETE): a Gateway of class trellis-waypoint gets a Deployment, a
ServiceAccount and a Service it owns; they follow its replicas annotation and go with it."""
import contextlib
import copy

import pytest
import trio

from controlplane.sources.kubernetes import Backoff
from controlplane.waypoints import GATEWAY_NAME, MANAGED_BY, MANAGER, Settings, WaypointReconciler, desired, plan
from kube_fixtures import synced_source, world
from meshcore import ports
from waypoint.__main__ import parser as waypoint_parser

FAST = dict(backoff=lambda: Backoff(initial=0.01, maximum=0.2), batch=0.01, watch_timeout=30)
DEPLOYMENTS, SERVICES, SAS = "/apis/apps/v1/deployments", "/api/v1/services", "/api/v1/serviceaccounts"
SETTINGS = Settings(image="trellis:test", control_plane="trellis-controlplane.mesh-system.svc:15012",
                    trust_domain="example.org")


def gateway(name, ns="shop", cls="trellis-waypoint", replicas=None):
    meta = {"name": name, "namespace": ns}
    if replicas is not None:
        meta["annotations"] = {"trellis.dev/replicas": str(replicas)}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": meta,
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


@contextlib.asynccontextmanager
async def running(tmp_path, standin):
    async with trio.open_nursery() as nursery:
        api, store = await synced_source(nursery, tmp_path, standin, **FAST)
        reconciler = WaypointReconciler(api, store, SETTINGS, retry=0.05)
        await nursery.start(reconciler.run)
        yield reconciler
        nursery.cancel_scope.cancel()
    await api.aclose()


def objects(standin, path, ns="shop"):
    return {k[1]: o for k, o in standin.objects.get(path, {}).items() if k[0] == ns}


async def until(predicate):
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_waypoint_gateway_gets_owned_deployment_serviceaccount_and_service(tmp_path):
    standin = world()  # holds shop/waypoint (class trellis-waypoint, no replicas annotation)
    standin.put(gateway("ingress", cls="istio"))   # not ours: ignored
    async with running(tmp_path, standin):
        await until(lambda: "waypoint" in objects(standin, DEPLOYMENTS))
        gw = standin.objects["/apis/gateway.networking.k8s.io/v1/gateways"][("shop", "waypoint")]
        dep = objects(standin, DEPLOYMENTS)["waypoint"]
        sa, svc = objects(standin, SAS)["waypoint"], objects(standin, SERVICES)["waypoint"]
        for o in (dep, sa, svc):
            assert o["metadata"]["ownerReferences"] == [{
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
                "uid": gw["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
            assert o["metadata"]["labels"][MANAGED_BY] == MANAGER
        assert dep["spec"]["replicas"] == 1
        tmpl = dep["spec"]["template"]
        assert tmpl["metadata"]["labels"][GATEWAY_NAME] == "waypoint"
        assert tmpl["metadata"]["labels"]["trellis.dev/dataplane-mode"] == "none"
        assert dep["spec"]["selector"]["matchLabels"] == {GATEWAY_NAME: "waypoint"}
        assert tmpl["spec"]["serviceAccountName"] == "waypoint"
        (c,) = tmpl["spec"]["containers"]
        assert c["command"] == ["python3", "-m", "waypoint"] and c["image"] == "trellis:test"
        args = dict(zip(c["args"][::2], c["args"][1::2]))
        assert args == {"--namespace": "shop", "--gateway": "waypoint", "--trust-domain": "example.org",
                        "--service-account": "waypoint",
                        "--control-plane": "trellis-controlplane.mesh-system.svc:15012",
                        "--token-file": "/var/run/secrets/trellis/token",
                        "--ca-root-file": "/var/run/secrets/trellis/root-cert.pem",
                        "--hbone-port": "15008", "--admin": "127.0.0.1:15000", "--metrics": "0.0.0.0:15020",
                        "--ready": "0.0.0.0:15021"}
        assert waypoint_parser().parse_args(c["args"]).token_file.name == "token"   # the waypoint takes them
        assert {p["containerPort"] for p in c["ports"]} == {ports.HBONE, ports.METRICS, ports.READY}
        assert c["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
        (vol,) = tmpl["spec"]["volumes"]
        (mount,) = c["volumeMounts"]
        assert mount == {"name": vol["name"], "mountPath": "/var/run/secrets/trellis", "readOnly": True}
        token, root = vol["projected"]["sources"]
        assert token["serviceAccountToken"] == {"path": "token", "audience": "trellis-ca", "expirationSeconds": 3600}
        # the mesh root the control plane publishes in every namespace (controlplane/rootcert.py)
        assert root["configMap"] == {"name": "trellis-ca-root-cert",
                                     "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}]}
        assert svc["spec"]["ports"][0]["name"] == "mesh" and svc["spec"]["ports"][0]["port"] == 15008
        assert svc["spec"]["selector"] == {GATEWAY_NAME: "waypoint"}
        # the other class's Gateway got nothing
        assert "ingress" not in objects(standin, DEPLOYMENTS) and "ingress" not in objects(standin, SERVICES)


async def test_replicas_annotation_change_updates_the_deployment_and_deletion_removes_all(tmp_path):
    standin = world()
    standin.put(gateway("other", ns="bank", replicas=2))   # another Gateway's objects stay put
    unmanaged = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"replicas": 3}}
    standin.put(copy.deepcopy(unmanaged))
    async with running(tmp_path, standin) as reconciler:
        await until(lambda: "waypoint" in objects(standin, DEPLOYMENTS) and "other" in objects(standin, DEPLOYMENTS, "bank"))
        other_rv = objects(standin, DEPLOYMENTS, "bank")["other"]["metadata"]["resourceVersion"]
        svc_rv = objects(standin, SERVICES)["waypoint"]["metadata"]["resourceVersion"]
        standin.put(gateway("waypoint", replicas=3))
        await until(lambda: objects(standin, DEPLOYMENTS)["waypoint"]["spec"]["replicas"] == 3)
        # the stand-in applies a PUT before the reconciler reads its answer and counts it
        await until(lambda: reconciler.stats["reconciles"] >= 2 and reconciler.stats["updated"] >= 1)
        assert reconciler.stats["updated"] == 1   # only the Deployment changed
        assert objects(standin, SERVICES)["waypoint"]["metadata"]["resourceVersion"] == svc_rv

        standin.delete("Gateway", "shop", "waypoint")
        await until(lambda: "waypoint" not in objects(standin, DEPLOYMENTS))
        await until(lambda: "waypoint" not in objects(standin, SERVICES) and "waypoint" not in objects(standin, SAS))
        assert objects(standin, DEPLOYMENTS, "bank")["other"]["metadata"]["resourceVersion"] == other_rv
        assert objects(standin, DEPLOYMENTS, "bank")["other"]["spec"]["replicas"] == 2
        assert objects(standin, DEPLOYMENTS)["web"]["spec"] == {"replicas": 3}   # not ours: untouched
        assert "web" in objects(standin, SERVICES) and "web" in objects(standin, SAS)


def served(obj, uid="u-1"):
    return {**obj, "metadata": {**obj["metadata"], "uid": uid}}


def test_plan_keeps_a_broken_gateways_objects_and_ignores_unlabelled_ones():
    good = desired(served(gateway("waypoint")), SETTINGS)
    broken = served(gateway("waypoint", replicas="many"))
    creates, updates, deletes = plan([broken], good, SETTINGS)
    assert (creates, updates, deletes) == ([], [], [])   # a bad edit does not tear the waypoint down
    foreign = {**good[0], "metadata": {**good[0]["metadata"], "labels": {}}}
    assert plan([], [foreign], SETTINGS) == ([], [], [])
    assert plan([], good, SETTINGS)[2] == good


def test_plan_updates_only_what_it_set_and_keeps_server_fields():
    want = desired(served(gateway("waypoint")), SETTINGS)
    have = copy.deepcopy(want)
    have[1]["spec"]["clusterIP"] = "10.96.0.20"          # set by the server
    have[1]["metadata"]["resourceVersion"] = "7"
    assert plan([served(gateway("waypoint"))], have, SETTINGS) == ([], [], [])
    have[1]["spec"]["selector"] = {"app": "hijacked"}
    creates, updates, _ = plan([served(gateway("waypoint"))], have, SETTINGS)
    assert creates == [] and len(updates) == 1
    assert updates[0]["spec"]["selector"] == {GATEWAY_NAME: "waypoint"}
    assert updates[0]["spec"]["clusterIP"] == "10.96.0.20" and updates[0]["metadata"]["resourceVersion"] == "7"


def test_a_recreated_gateway_takes_ownership_with_its_new_uid():
    old = desired(served(gateway("waypoint"), uid="old"), SETTINGS)
    _, updates, deletes = plan([served(gateway("waypoint"), uid="new")], old, SETTINGS)
    assert deletes == [] and len(updates) == 3
    assert {u["metadata"]["ownerReferences"][0]["uid"] for u in updates} == {"new"}


@pytest.mark.parametrize("value", ["0", "17", "x"])
def test_invalid_replicas_create_nothing(value):
    assert desired(served(gateway("waypoint", replicas=value)), SETTINGS) is None
