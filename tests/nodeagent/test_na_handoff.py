"""ZDS handoff over a real SOCK_SEQPACKET socket: messages, fds, replay after restart."""
from __future__ import annotations

import array
import json
import os
import socket
from pathlib import Path

import pytest
import trio

from meshcore import netns, podsockets
from nodeagent.handoff import HandoffClient, HandoffError
from nodeagent.reconcile import Pod


class FakeZtunnelPeer:
    """The ztunnel end of the socket: records (message, fds) and answers each."""

    def __init__(self, path: Path, answer: dict | None = None):
        self.path, self.answer = path, answer or {"ok": True}
        self.messages: list[tuple[dict, list[int]]] = []
        self.conns: list = []
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        await self.sock.bind(str(self.path))
        self.sock.listen(4)
        task_status.started()
        for _ in range(20):
            conn, _ = await self.sock.accept()
            self.conns.append(conn)
            for _ in range(100):
                data, anc, _, _ = await conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
                if not data:
                    break
                fds = array.array("i")
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.messages.append((json.loads(data), list(fds)))
                await conn.send(json.dumps(self.answer).encode())
            conn.close()

    def ops(self) -> list[str]:
        return [m["op"] for m, _ in self.messages]

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()
        self.path.unlink(missing_ok=True)
        for _, fds in self.messages:
            for fd in fds:
                os.close(fd)
            fds.clear()


def map_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("map_id:"):
            return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a BPF map")


def pod_of(p) -> Pod:
    return Pod(f"default/{p.id}", "default", p.id, p.pod_ip, "web", p.netns)


async def wait_for(pred, what: str):
    with trio.fail_after(5):
        while not pred():
            await trio.sleep(0.01)


async def test_hello_add_remove_carry_the_right_fds(programs, pod, tmp_path):
    peer = FakeZtunnelPeer(tmp_path / "ztunnel.sock")
    client = HandoffClient(peer.path, "n1", programs.origdst_fd)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await client.add(pod_of(pod))
            await client.remove(pod_of(pod).uid)
            assert peer.ops() == ["hello", "add", "remove"]
            (hello, hfds), (add, afds), (remove, rfds) = peer.messages
            assert hello == {"op": "hello", "node": "n1"}
            assert len(hfds) == 1 and map_id(hfds[0]) == map_id(programs.origdst_fd)
            assert add == {"op": "add", "namespace": "default", "name": pod.id, "address": pod.pod_ip,
                           "serviceAccount": "web", "listeners": ["127.0.0.1:15001", "[::1]:15001", "0.0.0.0:15008"]}
            st, want = os.fstat(afds[0]), os.stat(f"/run/netns/{pod.netns}")
            assert (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
            # the pod's listening sockets ride along, made in the pod's netns and held by us
            assert len(afds) == 4
            for fd, address in zip(afds[1:], add["listeners"]):
                with socket.socket(fileno=os.dup(fd)) as s:
                    assert podsockets.address_of(s) == address
                    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            assert remove == {"op": "remove", "uid": f"default/{pod.id}"} and rfds == []
            assert f"default/{pod.id}" not in client.sockets  # let go with the pod
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        peer.close()


async def test_restarted_ztunnel_gets_every_pod_again(programs, pod, tmp_path):
    path = tmp_path / "ztunnel.sock"
    first = FakeZtunnelPeer(path)
    client = HandoffClient(path, "n1", programs.origdst_fd)
    second = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve)
            await client.add(pod_of(pod))
            assert await client.ensure_connected()
            nursery.cancel_scope.cancel()
        first.close()  # ztunnel exits
        assert not await client.ensure_connected()  # nobody listening: logged, stays up
        second = FakeZtunnelPeer(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.serve)
            assert await client.ensure_connected()
            await wait_for(lambda: len(second.messages) == 2, "replay")
            assert second.ops() == ["hello", "add"]
            assert second.messages[1][0]["name"] == pod.id
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        first.close()
        if second:
            second.close()


async def test_ztunnel_not_up_yet_queues_pods(programs, pod, tmp_path):
    path = tmp_path / "ztunnel.sock"
    client = HandoffClient(path, "n1", programs.origdst_fd)
    await client.add(pod_of(pod))  # no ztunnel: recorded, no exception
    assert not client.connected
    peer = FakeZtunnelPeer(path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            assert await client.ensure_connected()
            assert peer.ops() == ["hello", "add"]
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        peer.close()


async def test_refusal_is_reported_with_the_pod(programs, pod, tmp_path):
    peer = FakeZtunnelPeer(tmp_path / "ztunnel.sock", {"ok": False, "error": "unknown workload"})
    client = HandoffClient(peer.path, "n1", programs.origdst_fd)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            # hello itself is refused by this peer, so the connect fails and is logged
            assert not await client.ensure_connected()
            peer.answer = {"ok": True}
            assert await client.ensure_connected()
            peer.answer = {"ok": False, "error": "unknown workload"}
            with pytest.raises(HandoffError, match=f"ztunnel refused add default/{pod.id}: unknown workload"):
                await client.add(pod_of(pod))
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        peer.close()


async def test_missing_pod_netns_is_named(programs, tmp_path):
    peer = FakeZtunnelPeer(tmp_path / "ztunnel.sock")
    client = HandoffClient(peer.path, "n1", programs.origdst_fd)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            with pytest.raises(HandoffError, match="tt-na-gone"):
                await client.add(Pod("default/x", "default", "x", "10.0.0.1", "default", "tt-na-gone"))
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        peer.close()


class RecordingPods:
    """Stands in for ztunnel's PodManager only: the socket and ZdsServer are the real ones."""

    def __init__(self):
        self.added, self.removed = [], []

    async def add(self, info):
        st = os.fstat(info.netns_fd)
        self.added.append((info.uid, info.address, info.identity, (st.st_dev, st.st_ino), len(info.listeners)))
        os.close(info.netns_fd)
        info.close()

    async def remove(self, uid):
        self.removed.append(uid)
        return True


async def test_wire_compatible_with_ztunnels_zds_server(programs, pod, tmp_path):
    from ztunnel.zds import ZdsServer

    pods, hellos = RecordingPods(), []
    server = ZdsServer(pods, "cluster.local", lambda fd, node: hellos.append((map_id(fd), node, os.close(fd))))
    client = HandoffClient(tmp_path / "ztunnel.sock", "n1", programs.origdst_fd)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, await server.bind(client.path))
                await client.add(pod_of(pod))
                await client.remove(pod_of(pod).uid)
                nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    want = os.stat(f"/run/netns/{pod.netns}")
    assert hellos == [(map_id(programs.origdst_fd), "n1", None)]
    assert pods.added == [(f"default/{pod.id}", pod.pod_ip, "spiffe://cluster.local/ns/default/sa/web",
                           (want.st_dev, want.st_ino), 3)]
    assert pods.removed == [f"default/{pod.id}"]


async def test_replay_ends_with_snapshot_sent_once_synced(programs, pod, tmp_path):
    """snapshotSent only after the agent's first full view, then after every replay."""
    path = tmp_path / "ztunnel.sock"
    client = HandoffClient(path, "n1", programs.origdst_fd)
    first = FakeZtunnelPeer(path)
    second = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve)
            await client.add(pod_of(pod))
            assert first.ops() == ["hello", "add"]  # not synced: ztunnel must keep what it has
            await client.snapshot_sent()
            await client.snapshot_sent()  # once per connection, not per call
            assert first.ops() == ["hello", "add", "snapshotSent"]
            nursery.cancel_scope.cancel()
        first.close()
        second = FakeZtunnelPeer(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.serve)
            assert await client.ensure_connected()
            await wait_for(lambda: len(second.messages) == 3, "replay")
            assert second.ops() == ["hello", "add", "snapshotSent"]
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        first.close()
        if second:
            second.close()


async def test_restarted_agent_takes_back_the_listeners_ztunnel_serves(programs, pod, tmp_path):
    """A node agent that restarts while ztunnel runs cannot bind the pod's ports again:
    ztunnel's reply hands its listeners back, so the agent holds them for the next ztunnel."""
    from ztunnel.zds import ZdsServer

    class KeepingPods:
        """ztunnel's PodManager as far as this needs: keeps the first pod's sockets."""

        def __init__(self):
            self.pods, self.listeners = {}, {}

        async def add(self, info):
            if info.uid not in self.pods:
                self.pods[info.uid] = info
                self.listeners[info.uid] = list(info.listeners)
            else:
                os.close(info.netns_fd)
                info.close()
            return self

        def listener_fds(self):
            return [(podsockets.address_of(s), s.fileno()) for s in next(iter(self.listeners.values()))]

    pods = KeepingPods()
    server = ZdsServer(pods, "cluster.local", lambda fd, node: os.close(fd))
    path = tmp_path / "ztunnel.sock"
    old, new = HandoffClient(path, "n1", programs.origdst_fd), HandoffClient(path, "n1", programs.origdst_fd)
    uid = f"default/{pod.id}"
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, await server.bind(path))
                await old.add(pod_of(pod))
                assert len(pods.listeners[uid]) == 3
                await old.aclose()  # the agent dies; ztunnel keeps serving its copies
                await new.add(pod_of(pod))
                held = new.sockets[uid].socks
                assert sorted(podsockets.address_of(s) for s in held) == sorted(
                    podsockets.address_of(s) for s in pods.listeners[uid])
                for s in pods.listeners[uid]:
                    s.close()  # ztunnel exits: the agent's copies still listen
                probe = trio.socket.from_stdlib_socket(netns.socket_in(netns.open_netns(pod.netns)))
                await probe.connect(("127.0.0.1", 15001))
                probe.close()
                nursery.cancel_scope.cancel()
    finally:
        await old.aclose()
        await new.aclose()
        for info in pods.pods.values():
            os.close(info.netns_fd)
