import json
import os
import socket

import trio

from meshcore import netns, podsockets
from meshcore.wire import zds as wire
from ztunnel import origdst, route
from meshcore.certs import CertificateManager
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.pods import PodManager
from meshcore.state import State
from ztunnel.zds import ZdsServer

from zt_ca import TestCA


async def request(sock, msg, fds=()):
    """Send one request; returns (reply as a dict, fds that came back)."""
    data = wire.encode(msg) if not isinstance(msg, (bytes, dict)) else (
        json.dumps(msg).encode() if isinstance(msg, dict) else msg)
    await sock.sendmsg([data], wire.ancillary(list(fds)))
    answer, anc, _, _ = await sock.recvmsg(65536, socket.CMSG_SPACE(wire.MAX_FDS * 4))
    return json.loads(answer), wire.fds_from(anc)


def can_connect(netns_fd: int, port: int) -> bool:
    probe = netns.socket_in(netns_fd)
    probe.settimeout(2)
    try:
        probe.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Ztunnel:
    """ztunnel's real ZdsServer and PodManager on a real SEQPACKET socket."""

    def __init__(self, nursery, tmp_path):
        self.certs = CertificateManager(TestCA(), "cluster.local")
        inputs = ProxyInputs(state=lambda: State(), certs=self.certs, metrics=Metrics(), origdst_fd=lambda: None,
                             pick=route.first, drain_timeout=0.5)
        self.nursery, self.path, self.hellos = nursery, tmp_path / "ztunnel.sock", []
        self.pods = PodManager(inputs, nursery)

    async def start(self):
        await self.nursery.start(self.certs.run)
        server = ZdsServer(self.pods, "cluster.local", lambda fd, node: self.hellos.append((fd, node)))
        await self.nursery.start(server.serve, await server.bind(self.path))
        c = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await c.connect(str(self.path))
        return c


def add_of(name, ip, listeners=()):
    return wire.AddPod(namespace="default", name=name, address=ip, service_account="zsa",
                       listeners=tuple(podsockets.address_of(s) for s in listeners))


async def test_hello_add_remove_over_seqpacket(lab, tmp_path):
    name, ip, fd = lab.pod("z", 7)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            zt = Ztunnel(n, tmp_path)
            c = await zt.start()
            map_fd = origdst.create_origdst_map(16)
            try:
                assert (await request(c, wire.Hello(node="n1"), [map_fd]))[0] == {"ok": True}
                assert zt.hellos[0][1] == "n1" and zt.hellos[0][0] != map_fd  # a received copy
                os.close(zt.hellos[0][0])

                r, _ = await request(c, {"op": "hello", "node": "n1"})
                assert not r["ok"] and "origdst" in r["error"]
                r, _ = await request(c, b"{not json")
                assert not r["ok"] and "bad message" in r["error"]
                r, _ = await request(c, {"op": "frob"})
                assert "unknown op 'frob'" in r["error"]
                r, _ = await request(c, {"op": "add", "namespace": "default", "name": "z"}, [fd])
                assert not r["ok"] and "'address'" in r["error"]

                # No listeners from the node agent: ztunnel binds its own and hands copies back.
                r, back = await request(c, add_of("z", ip), [fd])
                assert r["ok"] and sorted(r["listeners"]) == ["0.0.0.0:15008", "127.0.0.1:15001", "[::1]:15001"]
                assert len(back) == len(r["listeners"])
                for b in back:
                    os.close(b)
                assert [p["uid"] for p in zt.pods.dump()] == ["default/z"]
                assert "0.0.0.0:15008" in zt.pods.dump()[0]["listeners"]
                assert can_connect(fd, 15001)  # the listeners really live in the pod netns
                # a second add of the same pod (node agent restart) keeps the running one
                before = zt.pods.pods["default/z"]
                r, back = await request(c, add_of("z", ip), [fd])
                assert r["ok"] and zt.pods.pods["default/z"] is before
                for b in back:
                    os.close(b)

                assert (await request(c, wire.RemovePod(uid="default/z")))[0] == {"ok": True}
                assert zt.pods.dump() == []
                assert (await request(c, wire.RemovePod(uid="default/z")))[0] == {"ok": True}
                await trio.sleep(0.7)
                assert not can_connect(fd, 15001)
            finally:
                os.close(map_fd)
                c.close()
            n.cancel_scope.cancel()


async def test_listeners_from_the_node_agent_are_served_and_outlive_ztunnel(lab, tmp_path):
    """The node agent's sockets: ztunnel serves them, and once it stops the kernel still
    queues connections on them (no refusal) for the next ztunnel."""
    name, ip, fd = lab.pod("h", 8)
    held = podsockets.bind_all(fd)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                zt = Ztunnel(n, tmp_path)
                c = await zt.start()
                r, back = await request(c, add_of("h", ip, held), [fd, *(s.fileno() for s in held)])
                assert r == {"ok": True} and back == []
                pod = zt.pods.pods["default/h"]
                assert sorted(a for a, _ in pod.listener_fds()) == sorted(podsockets.address_of(s) for s in held)
                await zt.pods.drain_all(0.5)
                c.close()
                n.cancel_scope.cancel()
        # ztunnel gone, our copies still listening: a client connects (and waits in the queue)
        assert can_connect(fd, 15001)
        # a listener at the wrong address is refused, naming it
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                zt = Ztunnel(n, tmp_path / "b")
                c = await zt.start()
                bad = wire.AddPod(namespace="default", name="h", address=ip, listeners=("0.0.0.0:15008",))
                r, _ = await request(c, bad, [fd, held[0].fileno()])
                assert not r["ok"] and "0.0.0.0:15008" in r["error"] and "127.0.0.1:15001" in r["error"]
                c.close()
                n.cancel_scope.cancel()
    finally:
        for s in held:
            s.close()


async def test_snapshot_sent_drops_pods_the_agent_no_longer_has(lab, tmp_path):
    _, ip_a, fd_a = lab.pod("a", 9)
    _, ip_b, fd_b = lab.pod("b", 10)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            zt = Ztunnel(n, tmp_path)
            c = await zt.start()
            map_fd = origdst.create_origdst_map(16)
            for name, ip, fd in (("a", ip_a, fd_a), ("b", ip_b, fd_b)):
                r, back = await request(c, add_of(name, ip), [fd])
                assert r["ok"]
                for b in back:
                    os.close(b)
            c.close()  # the node agent restarts; meanwhile pod b was deleted
            c = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            await c.connect(str(zt.path))
            assert (await request(c, wire.Hello(node="n1"), [map_fd]))[0]["ok"]
            r, back = await request(c, add_of("a", ip_a), [fd_a])
            for b in back:
                os.close(b)
            assert sorted(zt.pods.pods) == ["default/a", "default/b"]  # not complete yet: keep b
            assert (await request(c, wire.SnapshotSent()))[0] == {"ok": True}
            assert sorted(zt.pods.pods) == ["default/a"]
            os.close(map_fd)
            for fd, _ in zt.hellos:
                os.close(fd)
            c.close()
            n.cancel_scope.cancel()


async def test_add_with_a_new_netns_replaces_the_pod(lab, tmp_path):
    _, ip, fd_old = lab.pod("r", 11)
    _, _, fd_new = lab.pod("r2", 12)  # the same pod recreated: same uid, another netns
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            zt = Ztunnel(n, tmp_path)
            c = await zt.start()
            for fd in (fd_old, fd_new):
                r, back = await request(c, add_of("r", ip), [fd])
                assert r["ok"], r
                for b in back:
                    os.close(b)
            pod = zt.pods.pods["default/r"]
            st = os.fstat(fd_new)
            assert pod.info.netns_id == (st.st_dev, st.st_ino)
            assert can_connect(fd_new, 15001)
            await trio.sleep(0.7)  # the old one drained
            assert not can_connect(fd_old, 15001)
            c.close()
            n.cancel_scope.cancel()
