"""The versioned store (versions, history, change notification), the directory source
(last-good on bad edits) and the subscribers' views."""
import trio

from controlplane.store import HISTORY, VersionedStore
from controlplane.views import allowed_identities, delta, node_view, waypoint_view
from cp_helpers import directory_store, policy, workload, write_config
from meshcore.resources import parse_documents


def test_versions_bump_only_on_effective_change(tmp_path):
    store, source = directory_store(write_config(tmp_path))
    assert source.reload() and store.version == 1 and store.current().errors == ()
    assert not source.reload() and store.version == 1
    (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", "10.244.2.9"))
    assert source.reload() and store.version == 2
    assert store.versions() == [1, 2]
    assert store.current().source == f"directory {tmp_path}"


def test_invalid_edit_keeps_the_last_good_objects_and_reports(tmp_path):
    store, source = directory_store(write_config(tmp_path))
    source.reload()
    (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", "10.244.2.300"))
    assert not source.reload(), "errors alone do not make a new version"
    web = store.current().resources[("WorkloadEntry", "default", "web")]
    assert str(web.spec.address) == "10.244.2.2", "the running object survives a bad edit"
    dump = store.dump()
    assert any("web.yaml" in e and "spec.address" in e for e in dump["errors"]), dump["errors"]
    (tmp_path / "web.yaml").unlink()
    source.reload()
    assert ("WorkloadEntry", "default", "web") not in store.current().resources and store.current().errors == ()


def test_history_is_bounded(tmp_path):
    store, source = directory_store(write_config(tmp_path))
    for i in range(HISTORY + 5):
        (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", f"10.244.{i // 200}.{i % 200 + 2}"))
        source.reload()
    assert len(store.versions()) == HISTORY and store.versions()[0] == store.version - HISTORY + 1
    view = lambda res: node_view(res, "node1")
    assert store.changes_since(store.versions()[0] - 1, view) is None, "a version out of history: no delta"
    snap, upserts, deletes = store.changes_since(store.version - 1, view)
    assert snap.version == store.version and [u["metadata"]["name"] for u in upserts] == ["web"] and not deletes


async def test_wait_for_change_wakes_on_publish_only(autojump_clock):
    store = VersionedStore(first_version=1)
    store.publish(parse_documents(workload("a", "n1", "a", "10.0.0.1"), "x").resources)
    async with trio.open_nursery() as nursery:
        got = []
        nursery.start_soon(lambda: _record(store, 1, got))
        await trio.sleep(60)
        assert got == [], "no change, no wake-up"
        assert not store.publish(store.current().resources.values()), "the same set again is no change"
        await trio.sleep(60)
        assert got == []
        store.publish(parse_documents(workload("b", "n1", "b", "10.0.0.2"), "x").resources)
        await trio.sleep(1)
        assert got == [2]


async def _record(store, since, got):
    got.append((await store.wait_for_change(since)).version)


async def test_directory_source_picks_up_file_changes(tmp_path):
    store, source = directory_store(write_config(tmp_path), poll=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        assert store.version == 1
        (tmp_path / "extra.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
        with trio.fail_after(5):
            snap = await store.wait_for_change(1)
        assert ("WorkloadEntry", "default", "db") in snap.resources
        nursery.cancel_scope.cancel()


def test_node_view_holds_only_the_policies_a_node_enforces(tmp_path):
    write_config(tmp_path)
    (tmp_path / "pol.yaml").write_text("---\n".join([
        policy("in-default", "default"), policy("mesh-wide", "trellis-system"), policy("elsewhere", "other")]))
    store, source = directory_store(tmp_path)
    source.reload()
    resources = store.current().resources
    view = node_view(resources, "node1")
    names = {k[2] for k in view if k[0] == "AuthorizationPolicy"}
    assert names == {"in-default", "mesh-wide"}
    assert ("WorkloadEntry", "default", "web") in view, "every workload is a possible destination"
    assert {k[2] for k in node_view(resources, "node9") if k[0] == "AuthorizationPolicy"} == {"mesh-wide"}


def test_delta_and_allowed_identities(tmp_path):
    store, source = directory_store(write_config(tmp_path))
    source.reload()
    old = node_view(store.current().resources, "node1")
    (tmp_path / "web.yaml").unlink()
    (tmp_path / "db.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
    source.reload()
    upserts, deletes = delta(old, node_view(store.current().resources, "node1"))
    assert [u["metadata"]["name"] for u in upserts] == ["db"] and deletes == [["WorkloadEntry", "default", "web"]]
    assert allowed_identities(store.current().resources, "node1", "cluster.local") == {
        "spiffe://cluster.local/ns/default/sa/db", "spiffe://cluster.local/ns/default/sa/sleep"}


WAYPOINT_WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: trellis-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: other}
spec: {clusterIP: 10.96.0.20, selector: {app: pay}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: other}
spec: {clusterIP: 10.96.0.30, selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart}]
  rules: [{backendRefs: [{name: cart, port: 80}, {name: pay, namespace: other, port: 80}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: cart-1, namespace: shop}
spec: {address: 10.244.1.5, node: node1, labels: {app: cart}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: pay-1, namespace: other}
spec: {address: 10.244.2.5, node: node2, labels: {app: pay}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: x-1, namespace: other}
spec: {address: 10.244.2.6, node: node2, labels: {app: x}}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-deny, namespace: shop}
spec: {action: DENY}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: other-deny, namespace: other}
spec: {action: DENY}
---
apiVersion: trellis.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: mesh, namespace: trellis-system}
spec: {mtls: {mode: STRICT}}
"""


def test_waypoint_view_is_its_namespace_routes_backends_endpoints_and_policies():
    loaded = parse_documents(WAYPOINT_WORLD, "world.yaml")
    assert loaded.errors == []
    resources = {r.key: r for r in loaded.resources}
    view = waypoint_view(resources, "shop", "wp")
    assert set(view) == {
        ("Namespace", "", "shop"), ("Gateway", "shop", "wp"), ("Service", "shop", "cart"),
        ("HTTPRoute", "shop", "cart-split"),
        ("Service", "other", "pay"),            # a route's cross-namespace backend
        ("WorkloadEntry", "shop", "cart-1"), ("WorkloadEntry", "other", "pay-1"),  # their endpoints
        ("AuthorizationPolicy", "shop", "shop-deny"), ("PeerAuthentication", "trellis-system", "mesh")}
    assert view[("Service", "shop", "cart")] == resources[("Service", "shop", "cart")].raw
    assert ("Gateway", "shop", "wp") not in waypoint_view(resources, "other", "wp"), "only its own Gateway"


def test_who_may_watch_which_view():
    import pytest
    from controlplane.views import SubscriptionRefused, subscriber_view
    resources = {r.key: r for r in parse_documents(WAYPOINT_WORLD, "world.yaml").resources}
    node1 = "spiffe://cluster.local/trellis/node/node1"
    assert subscriber_view(node1, "cluster.local", "node", "node1")(resources) == node_view(resources, "node1")
    assert subscriber_view(node1, "cluster.local", "node", None)(resources) == node_view(resources, "node1")
    waypoint = "spiffe://cluster.local/ns/shop/sa/wp"
    assert subscriber_view(waypoint, "cluster.local", "waypoint", "wp", "shop")(resources) == \
        waypoint_view(resources, "shop", "wp")
    refused = [
        (node1, "node", "node2", None, "node node1 may only watch its own view, not 'node2'"),
        (waypoint, "node", "node1", None, "is not a node credential"),
        (node1, "waypoint", "wp", "shop", "is not a workload identity"),
        (waypoint, "waypoint", "wp", "other", "may only watch a waypoint (Gateway) of namespace shop"),
        ("spiffe://elsewhere/ns/shop/sa/wp", "waypoint", "wp", "shop", "in trust domain cluster.local"),
        (waypoint, "sidecar", "x", None, "unknown subscriber kind 'sidecar'"),
    ]
    for caller, kind, name, ns, message in refused:
        with pytest.raises(SubscriptionRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
            subscriber_view(caller, "cluster.local", kind, name, ns)
