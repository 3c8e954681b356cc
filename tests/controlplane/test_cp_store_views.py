"""The config store (versions, history, last-good on bad edits) and per-node views."""
import trio

from controlplane.store import HISTORY, ConfigStore
from controlplane.views import allowed_identities, delta, node_view
from cp_helpers import policy, workload, write_config


def test_versions_bump_only_on_effective_change(tmp_path):
    store = ConfigStore(write_config(tmp_path), first_version=1)
    assert store.reload() and store.version == 1 and store.errors == []
    assert not store.reload() and store.version == 1
    (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", "10.244.2.9"))
    assert store.reload() and store.version == 2
    assert set(store.history) == {1, 2}


def test_invalid_edit_keeps_the_last_good_objects_and_reports(tmp_path):
    store = ConfigStore(write_config(tmp_path), first_version=1)
    store.reload()
    (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", "10.244.2.300"))
    store.reload()
    web = store.resources[("WorkloadEntry", "default", "web")]
    assert str(web.spec.address) == "10.244.2.2", "the running object survives a bad edit"
    dump = store.dump()
    assert any("web.yaml" in e and "spec.address" in e for e in dump["errors"]), dump["errors"]
    (tmp_path / "web.yaml").unlink()
    store.reload()
    assert ("WorkloadEntry", "default", "web") not in store.resources and store.errors == []


def test_history_is_bounded(tmp_path):
    store = ConfigStore(write_config(tmp_path), first_version=1)
    for i in range(HISTORY + 5):
        (tmp_path / "web.yaml").write_text(workload("web", "node2", "web", f"10.244.{i // 200}.{i % 200 + 2}"))
        store.reload()
    assert len(store.history) == HISTORY and min(store.history) == store.version - HISTORY + 1


async def test_watch_picks_up_file_changes(tmp_path):
    store = ConfigStore(write_config(tmp_path), poll_interval=0.02, first_version=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.watch)
        assert store.version == 1
        (tmp_path / "extra.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
        with trio.fail_after(5):
            await store.wait_changed(1)
        assert ("WorkloadEntry", "default", "db") in store.resources
        nursery.cancel_scope.cancel()


def test_node_view_holds_only_the_policies_a_node_enforces(tmp_path):
    write_config(tmp_path)
    (tmp_path / "pol.yaml").write_text("---\n".join([
        policy("in-default", "default"), policy("mesh-wide", "trellis-system"), policy("elsewhere", "other")]))
    store = ConfigStore(tmp_path, first_version=1)
    store.reload()
    view = node_view(store.resources, "node1")
    names = {k[2] for k in view if k[0] == "AuthorizationPolicy"}
    assert names == {"in-default", "mesh-wide"}
    assert ("WorkloadEntry", "default", "web") in view, "every workload is a possible destination"
    assert {k[2] for k in node_view(store.resources, "node9") if k[0] == "AuthorizationPolicy"} == {"mesh-wide"}


def test_delta_and_allowed_identities(tmp_path):
    store = ConfigStore(write_config(tmp_path), first_version=1)
    store.reload()
    old = node_view(store.resources, "node1")
    (tmp_path / "web.yaml").unlink()
    (tmp_path / "db.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
    store.reload()
    upserts, deletes = delta(old, node_view(store.resources, "node1"))
    assert [u["metadata"]["name"] for u in upserts] == ["db"] and deletes == [["WorkloadEntry", "default", "web"]]
    assert allowed_identities(store.resources, "node1", "cluster.local") == {
        "spiffe://cluster.local/ns/default/sa/db", "spiffe://cluster.local/ns/default/sa/sleep"}
