"""The Kubernetes config source against an API-server stand-in speaking the real list/watch
protocol (trellis/lab/apiserver.py): same snapshot as the directory source, resumed watches that
neither lose nor repeat an update, relist on 410 Gone, back-off on errors."""
import contextlib
import copy

import pytest
import trio

from controlplane.sources.directory import DirectorySource
from kubewatch.client import KubeApi, load_config
from controlplane.sources.kubernetes import COLLECTIONS, Backoff, KubernetesSource
from controlplane.store import VersionedStore
from kube_fixtures import DOCS, WORLD, kubeconfig, world

FAST = dict(backoff=lambda: Backoff(initial=0.01, maximum=0.2), batch=0.01, watch_timeout=30)


@contextlib.asynccontextmanager
async def kube_source(tmp_path, standin, **kw):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        api = KubeApi(load_config(kubeconfig(tmp_path, port)))
        store = VersionedStore(first_version=1)
        source = KubernetesSource(api, store, **{**FAST, **kw})
        with trio.fail_after(20):
            await nursery.start(source.run)
        yield source, store
        nursery.cancel_scope.cancel()
    await api.aclose()


async def test_snapshot_equals_the_directory_sources_for_the_same_objects(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "world.yaml").write_text(WORLD)
    from_dir = VersionedStore(first_version=1)
    DirectorySource(tmp_path / "dir", from_dir).reload()
    async with kube_source(tmp_path, world()) as (source, store):
        kube, files = store.current(), from_dir.current()
        assert {k: r.raw for k, r in kube.resources.items()} == {k: r.raw for k, r in files.resources.items()}
        # the Pod is the workload shape the data plane consumes; the pending one is no workload yet
        pod = kube.resources[("WorkloadEntry", "shop", "web-1")].spec
        assert (str(pod.address), pod.node, pod.service_account, pod.ports) == ("10.244.1.5", "node1", "web", {"http": 8080})
        assert ("WorkloadEntry", "shop", "pending") not in kube.resources
        assert ("Pod", "shop", "web-1") not in kube.resources
        # the same validation and the same message; only where it came from differs
        assert [(e.obj, e.path, e.message) for e in kube.errors] == [(e.obj, e.path, e.message) for e in files.errors]
        assert [str(e) for e in kube.errors] == ["kubernetes: Service shop/typo: spec.ports[0].targetPort: 'Http_Port' "
                                                 "is neither a port number 1-65535 nor a port name (IANA_SVC_NAME: at "
                                                 "most 15 lowercase letters, digits and '-', with a letter)"]
        assert kube.source.startswith("kubernetes http://127.0.0.1:")


async def test_watches_start_from_the_lists_version_with_bookmarks_and_a_timeout(tmp_path):
    standin = world()
    async with kube_source(tmp_path, standin) as (source, store):
        listed_at = str(standin.rv)
        with trio.fail_after(10):
            await standin.until(lambda: len(standin.watches()) >= len(COLLECTIONS))
        for w in standin.watches():
            assert w.params["resourceVersion"] == listed_at, w
            assert w.params["allowWatchBookmarks"] == "true" and 30 <= int(w.params["timeoutSeconds"]) <= 60
        assert source.stats["lists"] == len(COLLECTIONS)


async def test_an_update_made_while_the_watch_was_down_arrives_exactly_once(tmp_path):
    standin = world()
    async with kube_source(tmp_path, standin) as (source, store):
        with trio.fail_after(10):
            await standin.until(lambda: len(standin.watches()) >= len(COLLECTIONS))
        version, before = store.version, standin.rv
        standin.fail_next = [500, 500, 500]     # the first re-watches fail too
        standin.drop_all_watches()             # every watch connection breaks mid-stream...
        web = copy.deepcopy(DOCS[1])
        web["spec"]["ports"][0]["port"] = 8000
        standin.put(web)                       # ...and this happens before any is back
        with trio.fail_after(10):
            snap = await store.wait_for_change(version)
        assert snap.version == version + 1
        assert snap.resources[("Service", "shop", "web")].spec.ports[0].port == 8000
        # the services watch resumed from the last version it had seen: the server replayed
        # exactly what came after it, and nothing was listed again
        resumed = [w for w in standin.watches("/api/v1/services") if w.params["resourceVersion"] == str(before)]
        assert resumed and source.stats["lists"] == len(COLLECTIONS) and source.stats["relists"] == 0
        # one more change: the next version is the very next number, nothing came twice
        standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "marker"}})
        with trio.fail_after(10):
            snap = await store.wait_for_change(version + 1)
        assert snap.version == version + 2 and source.stats["duplicates"] == 0
        assert source.stats["errors"] >= len(COLLECTIONS), "every dropped watch counted as an error"


@pytest.mark.parametrize("gone_as", ["event", "http"])
async def test_410_gone_leads_to_a_relist_that_sees_deletions(tmp_path, gone_as):
    standin = world(gone_as=gone_as)
    async with kube_source(tmp_path, standin) as (source, store):
        version = store.version
        standin.drop_all_watches()
        standin.delete("AuthorizationPolicy", "shop", "deny-legacy")
        standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}})
        standin.compact()                      # those events have left the server's history
        with trio.fail_after(10):
            snap = await store.wait_for_change(version)
            while ("AuthorizationPolicy", "shop", "deny-legacy") in snap.resources or \
                    ("Namespace", "", "later") not in snap.resources:
                snap = await store.wait_for_change(snap.version)
        assert source.stats["relists"] >= 1 and source.stats["lists"] > len(COLLECTIONS)


async def test_bookmarks_move_the_resume_point(tmp_path):
    standin = world(bookmark_every=0.05)
    async with kube_source(tmp_path, standin) as (source, store):
        listed_at = standin.rv
        standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
        with trio.fail_after(10):
            while source.stats["bookmarks"] < 2 * len(COLLECTIONS):
                await trio.sleep(0.02)
        standin.drop_all_watches()
        with trio.fail_after(10):
            await standin.until(lambda: len(standin.watches("/api/v1/pods")) >= 2)
        # no Pod changed, yet the pods watch resumes past the list's version: from a bookmark
        assert int(standin.watches("/api/v1/pods")[-1].params["resourceVersion"]) > listed_at


async def test_errors_back_off_with_jitter_instead_of_spinning(tmp_path):
    standin = world()
    standin.fail_next = [500] * 8 + [503] * 4
    async with kube_source(tmp_path, standin) as (source, store):
        assert ("Service", "shop", "web") in store.current().resources, "synced despite the errors"
        assert source.stats["errors"] == 12 and len(standin.lists()) == len(COLLECTIONS) + 12
        slept = [d for b in source.backoffs.values() for d in b.delays]
        assert len(slept) == 12, "one sleep per failure"
        for b in source.backoffs.values():
            # each delay is drawn from [d/2, d] with d doubling: never shorter than the last
            assert all(later >= earlier for earlier, later in zip(b.delays, b.delays[1:])), b.delays
            assert all(0.005 <= d <= 0.2 for d in b.delays)


async def test_unauthorized_is_an_error_with_advice_and_retried(tmp_path, caplog):
    standin = world()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        api = KubeApi(load_config(kubeconfig(tmp_path, port, token="wrong")))
        source = KubernetesSource(api, VersionedStore(first_version=1), **FAST)
        nursery.start_soon(source.run)
        with trio.fail_after(10):
            await standin.until(lambda: len(standin.requests) >= len(COLLECTIONS) + 3)
            await standin.until(lambda: source.stats["errors"] >= 3)
        assert source.store.version == 0, "nothing published before every collection was listed"
        assert any("401 Unauthorized" in r.getMessage() and "RBAC" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()
    await api.aclose()


async def test_an_api_that_is_not_installed_is_empty_and_retried(tmp_path):
    """No Gateway API CRDs in the cluster (404): the rest is served, the 404 retried."""
    standin = world()
    collections = {**COLLECTIONS, "/apis/example.dev/v1/widgets": ("example.dev/v1", "Widget")}
    async with kube_source(tmp_path, standin, collections=collections) as (source, store):
        assert ("Service", "shop", "web") in store.current().resources
        with trio.fail_after(10):
            await standin.until(lambda: len(standin.lists("/apis/example.dev/v1/widgets")) >= 3)
        delays = source.backoffs["/apis/example.dev/v1/widgets"].delays
        assert len(delays) >= 2 and delays[1] >= delays[0]




def test_every_crd_the_chart_installs_is_read_by_the_source():
    """A kind the chart gives a CRD for is one a user can create in the cluster: the source
    must list and watch it (TrafficPolicy and RateLimitPolicy had CRDs but were never read)."""
    from pathlib import Path

    import yaml
    crds = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "trellis" / "crds"
    served = {(api, kind) for api, kind in COLLECTIONS.values()}
    for f in sorted(crds.glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        group, names = crd["spec"]["group"], crd["spec"]["names"]
        for v in crd["spec"]["versions"]:
            path = f"/apis/{group}/{v['name']}/{names['plural']}"
            assert COLLECTIONS.get(path) == (f"{group}/{v['name']}", names["kind"]), f"{f.name}: {path} not read"
    assert ("trellis.dev/v1alpha1", "TrafficPolicy") in served and ("trellis.dev/v1alpha1", "RateLimitPolicy") in served


async def test_traffic_and_rate_limit_policies_come_from_the_api(tmp_path):
    standin = world()
    for kind, spec in (("TrafficPolicy", {"targetRefs": [{"kind": "Service", "name": "web"}],
                                          "loadBalancer": {"simple": "LEAST_REQUEST"}}),
                       ("RateLimitPolicy", {"targetRefs": [{"kind": "Service", "name": "web"}], "requestsPerUnit": 5})):
        standin.put({"apiVersion": "trellis.dev/v1alpha1", "kind": kind, "metadata": {"name": "web", "namespace": "shop"},
                     "spec": spec})
    async with kube_source(tmp_path, standin) as (source, store):
        res = store.current().resources
        assert res[("TrafficPolicy", "shop", "web")].spec.load_balancer == "LEAST_REQUEST"
        assert res[("RateLimitPolicy", "shop", "web")].spec.limit.requests_per_unit == 5


HEADLESS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
            # as the API server serves a StatefulSet's governing Service
            "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ipFamilies": ["IPv4"],
                     "ipFamilyPolicy": "SingleStack", "publishNotReadyAddresses": True, "selector": {"app": "db"},
                     "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": 5432}]},
            "status": {"loadBalancer": {}}}
EXTERNAL = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "api.payments.example.com",
                     "sessionAffinity": "None"}, "status": {"loadBalancer": {}}}
DB_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
          "spec": {"nodeName": "node2", "serviceAccountName": "db", "hostname": "db-0", "subdomain": "db",
                   "containers": [{"name": "pg", "image": "postgres", "ports": [{"containerPort": 5432}]}]},
          "status": {"phase": "Running", "podIP": "10.244.2.7"}}


async def test_headless_and_external_name_services_are_part_of_the_mesh_not_errors(tmp_path):
    from meshcore.state import State
    standin = world()
    for obj in (HEADLESS, EXTERNAL, DB_POD):
        standin.put(copy.deepcopy(obj))
    async with kube_source(tmp_path, standin) as (source, store):
        snap = store.current()
        # no recurring source error: only the world's own deliberate typo
        assert [e.obj for e in snap.errors] == ["Service shop/typo"]
        db, ext = snap.resources[("Service", "shop", "db")], snap.resources[("Service", "shop", "payments")]
        assert db.spec.headless and db.spec.cluster_ip is None and db.spec.cluster_ip_text == "None"
        assert ext.spec.type == "ExternalName" and ext.spec.external_name == "api.payments.example.com"
        state = State.from_resources(list(snap.resources.values()))
        svc = next(s for s in state.services if s.key == "shop/db")
        assert [w.uid for w in state.endpoints(svc)] == ["shop/db-0"] and state.service_at_ip("None") is None
        assert "shop/payments" not in {s.key for s in state.services}
        # an edit arrives as for any Service: the alias moves, the headless Service gets a label
        version = snap.version
        standin.put(copy.deepcopy(EXTERNAL) | {"spec": dict(EXTERNAL["spec"], externalName="api2.example.com")})
        standin.put(copy.deepcopy(HEADLESS) | {"metadata": dict(HEADLESS["metadata"], labels={"tier": "data"})})
        with trio.fail_after(10):
            while (store.current().version == version
                   or store.current().resources[("Service", "shop", "db")].labels != {"tier": "data"}):
                await trio.sleep(0.02)
        now = store.current()
        assert now.resources[("Service", "shop", "payments")].spec.external_name == "api2.example.com"
        assert [e.obj for e in now.errors] == ["Service shop/typo"]
