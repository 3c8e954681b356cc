"""Gateway API status written in a cluster (controlplane/statuswriter.py) against the
API-server stand-in, over real HTTP: the status subresource served the real way (a normal
write ignores status; PUT/merge-PATCH of /status changes only status; generation; 409 on a
stale resourceVersion), status written once and not again while nothing changes,
lastTransitionTime kept, another controller's entry kept, two control planes converging."""
import contextlib
import copy

import pytest
import trio

from controlplane.sources.kubernetes import Backoff
from controlplane.statuswriter import StatusWriter
from kube_fixtures import synced_source, world
from kubewatch.client import KubeApiError
from meshcore.resources.grants import CONTROLLER_NAME

FAST = dict(backoff=lambda: Backoff(initial=0.01, maximum=0.2), batch=0.01, watch_timeout=30)
ROUTES, GATEWAYS = "/apis/gateway.networking.k8s.io/v1/httproutes", "/apis/gateway.networking.k8s.io/v1/gateways"
ROUTE_STATUS = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web/status"
CLASS = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "trellis-waypoint"},
         "spec": {"controllerName": CONTROLLER_NAME}}
OTHER = {"parentRef": {"name": "ingress"}, "controllerName": "example.net/gateway",
         "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                         "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


@contextlib.asynccontextmanager
async def cluster(tmp_path, with_class=True):
    standin = world()
    if with_class:
        standin.put(copy.deepcopy(CLASS))
    async with trio.open_nursery() as nursery:
        api, store = await synced_source(nursery, tmp_path, standin, **FAST)
        yield standin, api, store
        nursery.cancel_scope.cancel()
    await api.aclose()


def route(standin):
    return standin.objects[ROUTES][("shop", "web")]


def conds(entry):
    return {c["type"]: c for c in entry["conditions"]}


async def until(predicate):
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.01)


async def test_status_subresource_is_served_the_real_way(tmp_path):
    async with cluster(tmp_path) as (standin, api, store):
        stored = route(standin)
        assert stored["metadata"]["generation"] == 1 and "status" not in stored
        rv = stored["metadata"]["resourceVersion"]
        out = await api.patch(ROUTE_STATUS, {"metadata": {"resourceVersion": rv}, "status": {"parents": [OTHER]},
                                             "spec": {"rules": []}})   # only status is taken from a status patch
        assert out["status"] == {"parents": [OTHER]} and out["metadata"]["generation"] == 1
        assert out["spec"] == stored["spec"] and int(out["metadata"]["resourceVersion"]) > int(rv)
        with pytest.raises(KubeApiError) as stale:
            await api.patch(ROUTE_STATUS, {"metadata": {"resourceVersion": rv}, "status": {}})
        assert stale.value.code == 409
        # a write of the object itself ignores status, and a spec change moves generation
        body = copy.deepcopy(route(standin))
        body["status"] = {"parents": []}
        body["spec"]["rules"][0]["backendRefs"][0]["weight"] = 5
        replaced = await api.put("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web", body)
        assert replaced["status"] == {"parents": [OTHER]} and replaced["metadata"]["generation"] == 2
        whole = await api.http.put(ROUTE_STATUS, json={**route(standin), "status": {"parents": []}})
        assert whole.status_code == 200 and route(standin)["status"] == {"parents": []}
        assert route(standin)["metadata"]["generation"] == 2
        wrong = await api.http.patch(ROUTE_STATUS, content=b'[]', headers={"Content-Type": "application/json-patch+json"})
        assert wrong.status_code == 415


async def test_status_is_written_once_and_kept_while_nothing_changes(tmp_path):
    async with cluster(tmp_path) as (standin, api, store):
        a = StatusWriter(api, store, clock=lambda: "2026-12-02T10:00:00Z")
        assert await a.reconcile() == 3     # the route, the waypoint Gateway, the GatewayClass
        [entry] = route(standin)["status"]["parents"]
        assert entry["controllerName"] == CONTROLLER_NAME
        assert entry["parentRef"] == {"group": "", "kind": "Service", "name": "web"}
        c = conds(entry)
        assert (c["Accepted"]["status"], c["ResolvedRefs"]["status"]) == ("True", "True")
        assert c["ResolvedWaypoints"]["reason"] == "MissingUseWaypointLabel"   # shop has no use-waypoint label
        gw = standin.objects[GATEWAYS][("shop", "waypoint")]["status"]
        assert {x["type"]: x["reason"] for x in gw["conditions"]} == {"Accepted": "Accepted", "Programmed": "Pending"}
        gc = standin.objects["/apis/gateway.networking.k8s.io/v1/gatewayclasses"][("", "trellis-waypoint")]
        assert gc["status"]["conditions"][0]["reason"] == "Accepted"
        rv = route(standin)["metadata"]["resourceVersion"]
        assert await a.reconcile() == 0 and route(standin)["metadata"]["resourceVersion"] == rv
        # a second control plane, later: the same status, nothing to write, the times stay
        b = StatusWriter(api, store, clock=lambda: "2026-12-02T11:00:00Z")
        assert await b.reconcile() == 0
        assert {x["lastTransitionTime"] for x in route(standin)["status"]["parents"][0]["conditions"]} == {
            "2026-12-02T10:00:00Z"}


async def test_a_change_rewrites_only_our_entry_and_only_the_condition_that_flipped(tmp_path):
    async with cluster(tmp_path) as (standin, api, store):
        a = StatusWriter(api, store, clock=lambda: "2026-12-02T10:00:00Z")
        await a.reconcile()
        standin.write_status("HTTPRoute", "shop", "web", {"parents": [OTHER] + route(standin)["status"]["parents"]})
        assert await a.reconcile() == 0                 # another controller's entry is not ours to touch
        body = copy.deepcopy(route(standin))
        body["spec"]["rules"][0]["backendRefs"] = [{"name": "gone", "port": 80}]
        standin.put(body)
        await until(lambda: store.current().resources[("HTTPRoute", "shop", "web")].raw["spec"]["rules"][0]
                    ["backendRefs"][0]["name"] == "gone")
        later = StatusWriter(api, store, clock=lambda: "2026-12-02T12:00:00Z")
        assert await later.reconcile() == 1
        other, ours = route(standin)["status"]["parents"]
        assert other == OTHER
        c = conds(ours)
        assert (c["ResolvedRefs"]["status"], c["ResolvedRefs"]["reason"]) == ("False", "BackendNotFound")
        assert c["ResolvedRefs"]["lastTransitionTime"] == "2026-12-02T12:00:00Z"
        assert c["Accepted"]["lastTransitionTime"] == "2026-12-02T10:00:00Z"
        assert {x["observedGeneration"] for x in ours["conditions"]} == {2}


async def test_two_control_planes_writing_at_once_converge(tmp_path):
    async with cluster(tmp_path) as (standin, api, store):
        writers = [StatusWriter(api, store, clock=lambda t=t: f"2026-12-02T1{t}:00:00Z") for t in (0, 1)]
        async with trio.open_nursery() as n:
            for w in writers:
                n.start_soon(w.reconcile)
        # at most one write per object each (the loser of a race gets 409 and writes nothing)
        assert sum(w.stats["written"] for w in writers) <= 6
        settled = copy.deepcopy(route(standin)["status"])
        for w in writers:
            assert await w.reconcile() == 0
        assert route(standin)["status"] == settled and len(settled["parents"]) == 1
        assert len({c["lastTransitionTime"] for c in settled["parents"][0]["conditions"]}) == 1


async def test_the_gateway_class_is_created_when_missing_and_accepted(tmp_path):
    async with cluster(tmp_path, with_class=False) as (standin, api, store):
        assert await StatusWriter(api, store, clock=lambda: "2026-12-02T10:00:00Z").reconcile() == 3
        gc = standin.objects["/apis/gateway.networking.k8s.io/v1/gatewayclasses"][("", "trellis-waypoint")]
        assert gc["spec"]["controllerName"] == CONTROLLER_NAME
        assert (gc["status"]["conditions"][0]["type"], gc["status"]["conditions"][0]["status"]) == ("Accepted", "True")


async def test_the_running_writer_follows_config_changes(tmp_path):
    async with cluster(tmp_path) as (standin, api, store):
        async with trio.open_nursery() as n:
            writer = StatusWriter(api, store, resync=3600)    # only config changes wake it
            await n.start(writer.run)
            await until(lambda: route(standin).get("status"))
            body = copy.deepcopy(route(standin))
            body["spec"]["parentRefs"][0]["name"] = "nope"
            standin.put(body)
            await until(lambda: conds(route(standin)["status"]["parents"][0])["Accepted"]["reason"]
                        == "NoMatchingParent")
            n.cancel_scope.cancel()
