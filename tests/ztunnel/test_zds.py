import array
import json
import os
import socket

import pytest
import trio

from meshcore import netns
from ztunnel import origdst, route
from meshcore.certs import CertificateManager
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.pods import PodManager
from meshcore.state import State
from ztunnel.zds import ZdsServer

from zt_ca import TestCA


async def request(sock, msg, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    await sock.sendmsg([json.dumps(msg).encode() if isinstance(msg, dict) else msg], anc)
    return json.loads(await sock.recv(65536))


async def test_hello_add_remove_over_seqpacket(lab, tmp_path):
    name, ip, fd = lab.pod("z", 7)
    hellos = []
    certs = CertificateManager(TestCA(), "cluster.local")
    inputs = ProxyInputs(state=lambda: State(), certs=certs, metrics=Metrics(), origdst_fd=lambda: None,
                         pick=route.first)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(certs.run)
            pods = PodManager(inputs, n)
            zds = ZdsServer(pods, "cluster.local", lambda fd, node: hellos.append((fd, node)))
            path = tmp_path / "ztunnel.sock"
            await n.start(zds.serve, await zds.bind(path))
            c = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            await c.connect(str(path))
            map_fd = origdst.create_origdst_map(16)
            try:
                assert await request(c, {"op": "hello", "node": "n1"}, [map_fd]) == {"ok": True}
                assert hellos[0][1] == "n1" and hellos[0][0] != map_fd  # a received copy
                os.close(hellos[0][0])

                r = await request(c, {"op": "hello", "node": "n1"})
                assert not r["ok"] and "origdst" in r["error"]
                r = await request(c, b"{not json")
                assert not r["ok"] and "bad message" in r["error"]
                r = await request(c, {"op": "frob"})
                assert "unknown op 'frob'" in r["error"]
                r = await request(c, {"op": "add", "uid": "default/z", "namespace": "default", "name": "z"}, [fd])
                assert not r["ok"] and "address" in r["error"]

                add = {"op": "add", "uid": "default/z", "namespace": "default", "name": "z", "address": ip,
                       "serviceAccount": "zsa"}
                assert await request(c, add, [fd]) == {"ok": True}
                assert [p["uid"] for p in pods.dump()] == ["default/z"]
                assert "0.0.0.0:15008" in pods.dump()[0]["listeners"]
                # the listeners really live in the pod netns
                probe = trio.socket.from_stdlib_socket(netns.socket_in(fd))
                await probe.connect(("127.0.0.1", 15001))
                probe.close()
                # a second add of the same pod (node agent restart) keeps the running one
                assert await request(c, add, [fd]) == {"ok": True}

                assert await request(c, {"op": "remove", "uid": "default/z"}) == {"ok": True}
                assert pods.dump() == []
                assert await request(c, {"op": "remove", "uid": "default/z"}) == {"ok": True}
                await trio.sleep(0.2)
                probe = trio.socket.from_stdlib_socket(netns.socket_in(fd))
                with pytest.raises(OSError):
                    await probe.connect(("127.0.0.1", 15001))
                probe.close()
            finally:
                os.close(map_fd)
                c.close()
            n.cancel_scope.cancel()
