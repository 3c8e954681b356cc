"""The owner tells its workers the config: every resource to a new worker, then only what
changed. After each change a worker holds what the owner holds and builds the same state a
single-process ztunnel would."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcore.resources import parse_documents
from meshcore.state import State
from meshcore.wire import workers as wire
from ztunnel.app import Config
from ztunnel.owner import Owner
from ztunnel.worker import OutOfStep, Worker

from test_app import StaticControlPlane, two_pods

TD = "cluster.local"


def load(text: str) -> dict:
    loaded = parse_documents(text, "test.yaml")
    assert not loaded.errors, [str(e) for e in loaded.errors]
    return {r.key: r for r in loaded.resources}


def workload(name: str, ip: str, app: str) -> str:
    return (f"apiVersion: trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec: {{address: {ip}, serviceAccount: {name}, node: n1, labels: {{app: {app}}}}}\n")


class Told:
    """The owner's fleet, recording what it would send instead of sending it."""

    def __init__(self, owner: Owner) -> None:
        self.messages: list[tuple[wire.Snapshot, bytes]] = []
        owner.fleet.broadcast = self.record
        owner.fleet.send = lambda _slot, msg, body=None, fds=(): self.record(msg, body, fds)

    def record(self, msg, body=None, fds=()) -> None:
        if isinstance(msg, wire.Snapshot):
            self.messages.append((msg, body))


def owner_and_worker():
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=Path("/nonexistent"),
                 run_dir=Path("/nonexistent"))
    owner = Owner(cfg, StaticControlPlane([]), 2)
    return owner, Told(owner), Worker(None, index=0, trust_domain=TD, drain_timeout=1)


def same_as_one_process(worker: Worker, resources: dict, version: int) -> None:
    assert {k: r.raw for k, r in worker.resources.items()} == {k: r.raw for k, r in resources.items()}
    assert worker.state.dump() == State.from_resources(resources.values(), trust_domain=TD, version=version).dump()


def test_a_new_worker_gets_everything_then_only_changes():
    owner, told, worker = owner_and_worker()
    first = {r.key: r for r in two_pods("10.0.0.1", "10.0.0.2")}
    owner.on_update(first, 1)
    msg, body = told.messages[-1]
    assert msg.base == -1 and len(json.loads(body)) == len(first)
    worker._snapshot(msg, body)
    same_as_one_process(worker, first, 1)

    # web relabelled, a workload added, the Service deleted; the rest the same objects
    second = dict(first)
    second.update(load(workload("web", "10.0.0.2", "web-v2") + "---\n" + workload("db", "10.0.0.3", "db")))
    del second[("Service", "default", "web")]
    owner.on_update(second, 2)
    msg, body = told.messages[-1]
    change = json.loads(body)
    assert msg.base == told.messages[-2][0].seq and msg.seq == msg.base + 1
    assert sorted(d["metadata"]["name"] for d in change["upserts"]) == ["db", "web"]
    assert change["deletes"] == [["Service", "default", "web"]]
    worker._snapshot(msg, body)
    same_as_one_process(worker, second, 2)

    # the control plane's client re-parsed everything (a reconnect): equal objects, no change
    owner.on_update(load("\n---\n".join(json.dumps(r.raw) for r in second.values())), 3)
    msg, body = told.messages[-1]
    assert json.loads(body) == {"upserts": [], "deletes": []}
    worker._snapshot(msg, body)
    same_as_one_process(worker, second, 3)

    # a worker started now (or a replacement) gets every resource
    late = Worker(None, index=1, trust_domain=TD, drain_timeout=1)
    owner._replay(owner.fleet.slots[1])
    msg, body = told.messages[-1]
    assert msg.base == -1 and msg.seq == worker.seq
    late._snapshot(msg, body)
    same_as_one_process(late, second, 3)


def test_a_change_to_a_snapshot_the_worker_lacks_is_refused():
    owner, told, worker = owner_and_worker()
    owner.on_update({r.key: r for r in two_pods("10.0.0.1", "10.0.0.2")}, 1)
    owner.on_update({}, 2)
    msg, body = told.messages[-1]
    assert msg.base == 1
    with pytest.raises(OutOfStep, match="holds snapshot -1"):
        worker._snapshot(msg, body)   # it never had snapshot 1
