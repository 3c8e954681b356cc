"""The Kubernetes config source against an API-server stand-in speaking the real list/watch
protocol (kube_standin.py): same snapshot as the directory source, resumed watches that
neither lose nor repeat an update, relist on 410 Gone, back-off on errors."""
import contextlib
import copy

import pytest
import trio
import yaml

from controlplane.sources.directory import DirectorySource
from controlplane.sources.kubeclient import KubeApi, KubeConfigError, load_config
from controlplane.sources.kubernetes import COLLECTIONS, Backoff, KubernetesSource
from controlplane.store import VersionedStore
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
FAST = dict(backoff=lambda: Backoff(initial=0.01, maximum=0.2), batch=0.01, watch_timeout=30)


def kubeconfig(tmp_path, port, token=TOKEN, user=None):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "me", "user": user or {"token": token}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}]}))
    return str(path)


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


def world(**kw) -> ApiServerStandIn:
    standin = ApiServerStandIn(token=TOKEN, **kw)
    for d in DOCS:
        standin.put(copy.deepcopy(d))
    return standin


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


def test_client_configuration(tmp_path, monkeypatch):
    # a kubeconfig with an exec plugin: refused with what to use instead
    path = kubeconfig(tmp_path, 1, user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                  "command": "aws"}})
    with pytest.raises(KubeConfigError, match="exec plugin, which is not supported here: use a token"):
        load_config(path)
    with pytest.raises(KubeConfigError, match="cannot load"):
        load_config(str(tmp_path / "missing"))
    # in a pod: the mounted ServiceAccount token and CA, over https to the service address
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("projected-token")
    (sa / "namespace").write_text("trellis-system")
    (sa / "ca.crt").write_text("")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = load_config(service_account_dir=str(sa))
    assert config.cluster.server == "https://10.96.0.1:443"
    assert config.user.token_file == str(sa / "token") and config.user.token == "projected-token"


async def test_lightkube_itself_lists_and_watches_under_trio(tmp_path):
    """The check behind the choice of client: lightkube's AsyncClient runs on trio (httpx's
    trio backend), with the list's resourceVersion kept, against the same stand-in."""
    from lightkube import AsyncClient
    from lightkube.resources.core_v1 import Namespace
    standin = world()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        client = AsyncClient(load_config(kubeconfig(tmp_path, port)))
        listing = client.list(Namespace)
        assert [n.metadata.name async for n in listing] == ["shop"]
        assert listing.resourceVersion == str(standin.rv)
        standin.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "two"}})
        with trio.fail_after(10):
            async for kind, ns in client.watch(Namespace, resource_version=listing.resourceVersion, server_timeout=5):
                assert (kind, ns.metadata.name) == ("ADDED", "two")
                break
        await client.close()
        nursery.cancel_scope.cancel()


async def test_control_plane_process_serves_from_the_kubernetes_source(tmp_path):
    """`python -m controlplane --source kubernetes --kubeconfig F`: the served config is
    the cluster's, and an edit in the cluster reaches /config_dump."""
    import socket
    import subprocess
    import sys
    from meshcore.admin import get_json

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    standin, admin_port = world(), free_port()

    async def dump():
        return await trio.to_thread.run_sync(lambda: get_json("127.0.0.1", admin_port, "/config_dump", timeout=2))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        cmd = [sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig", kubeconfig(tmp_path, port),
               "--ca-dir", str(tmp_path / "ca"), "--listen", f"127.0.0.1:{free_port()}",
               "--admin", f"127.0.0.1:{admin_port}"]
        proc = await trio.lowlevel.open_process(cmd, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(60):
                while True:
                    try:
                        d = await dump()
                        break
                    except OSError:
                        assert proc.poll() is None, "the control plane exited"
                        await trio.sleep(0.1)
                assert d["source"] == f"kubernetes http://127.0.0.1:{port}"
                names = {(r["kind"], r["metadata"]["name"]) for r in d["resources"]}
                assert {("Service", "web"), ("WorkloadEntry", "web-1"), ("HTTPRoute", "web")} <= names
                assert d["sourceStatus"]["stats"]["lists"] == len(COLLECTIONS)
                standin.delete("Service", "shop", "web")
                while ("Service", "web") in {(r["kind"], r["metadata"]["name"]) for r in d["resources"]}:
                    await trio.sleep(0.1)
                    d = await dump()
        finally:
            proc.terminate()
            with trio.fail_after(20):
                assert await proc.wait() == 0
        nursery.cancel_scope.cancel()


def test_a_bad_kubeconfig_exits_1_naming_the_problem(tmp_path):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "controlplane", "--source", "kubernetes", "--kubeconfig",
                          str(tmp_path / "nope"), "--ca-dir", str(tmp_path / "ca")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "cannot load the Kubernetes client configuration" in res.stderr, res.stderr


def test_the_kubernetes_client_stays_out_of_the_data_plane_and_meshcore():
    """lightkube and httpx only load in a control plane that reads the API server."""
    import subprocess
    import sys
    probe = ("import importlib, pkgutil, sys, ztunnel, meshcore, controlplane.__main__\n"
             "for pkg in (ztunnel, meshcore):\n"
             "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
             "        importlib.import_module(m.name)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightkube', 'httpx2', 'httpcore2', 'anyio'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


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
