"""The full in-process data path through real netns, veth, TLS and the BPF origdst map."""
from __future__ import annotations

import os
import socket

import pytest
import trio

from meshcore import netns
from ztunnel import origdst, route
from meshcore.certs import CertificateManager
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo
from ztunnel.pods import PodManager
from meshcore.state import State

from zt_ca import TestCA
from zt_helpers import pol, rule, svc, wl

VIP = "10.96.0.10"
TD = "spiffe://cluster.local"


async def echo_server(fd: int, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
    """The app: answers with the peer address it sees, then echoes until EOF."""
    raw = netns.socket_in(fd)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind((host, port))
    raw.listen(16)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))

    async def handle(stream):
        async with stream:
            try:
                await stream.send_all(f"{stream.socket.getpeername()[0]}\n".encode())
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass   # a client that closes before reading every echo (a real app shrugs too)

    await trio.serve_listeners(handle, [listener], task_status=task_status)


async def client(fd: int, map_fd: int, dst: tuple[str, int], payload: bytes) -> bytes:
    """A pod app: connect() as if captured by eBPF, recording the original destination first."""
    raw = netns.socket_in(fd)
    raw.bind(("127.0.0.1", 0))
    origdst.put(map_fd, netns.netns_cookie(raw), raw.getsockname()[1], *dst)
    sock = trio.socket.from_stdlib_socket(raw)
    await sock.connect(("127.0.0.1", 15001))
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = bytearray()
        try:
            while chunk := await stream.receive_some(65536):
                got += chunk
        except trio.BrokenResourceError:
            return b"<reset>"  # how ztunnel refuses a connection it already accepted
        return bytes(got)


async def eventually(predicate, attempts=100, interval=0.02):
    for _ in range(attempts):
        if predicate():
            return
        await trio.sleep(interval)
    assert predicate()


def mesh_state(a_ip, b_ip, c_ip, policies=()):
    return State(workloads=[wl("client", a_ip), wl("web", b_ip), wl("other", c_ip)],
                 services=[svc("web", VIP, ports=((80, 8080),))], policies=list(policies),
                 enrolled_namespaces=frozenset({"default"}))


async def test_service_vip_over_hbone_with_authz_and_passthrough(lab):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    _, c_ip, c_fd = lab.pod("c", 3)
    map_fd = origdst.create_origdst_map(1024)
    current = {"state": mesh_state(a_ip, b_ip, c_ip)}
    metrics = Metrics()
    ca = TestCA()
    certs = CertificateManager(ca, "cluster.local")
    inputs = ProxyInputs(state=lambda: current["state"], certs=certs, metrics=metrics,
                         origdst_fd=lambda: map_fd, pick=route.first, drain_timeout=2)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(certs.run)
                await n.start(echo_server, b_fd, "0.0.0.0", 8080)
                await n.start(echo_server, lab.node_fd(), lab.node_ip, 9090)
                pods = PodManager(inputs, n)
                for name, ip_, fd in (("client", a_ip, a_fd), ("web", b_ip, b_fd), ("other", c_ip, c_fd)):
                    await pods.add(PodInfo("default", name, ip_, name, os.dup(fd)))
                for name in ("client", "web", "other"):
                    await certs.wait_ready(f"{TD}/ns/default/sa/{name}")

                # 1. service VIP -> HBONE -> app in B, which sees B's own IP
                payload = os.urandom(300_000)
                got = await client(a_fd, map_fd, (VIP, 80), payload)
                assert got == f"{b_ip}\n".encode() + payload
                assert metrics.value("istio_tcp_connections_opened_total", reporter="destination",
                                     source_principal=f"{TD}/ns/default/sa/client", source_workload="client",
                                     destination_workload="web",
                                     destination_principal=f"{TD}/ns/default/sa/web",
                                     destination_service="default/web",
                                     connection_security_policy="mutual_tls") == 1
                assert metrics.value("istio_tcp_connections_opened_total", reporter="source",
                                     source_workload="client", destination_workload="web") == 1
                # the destination side books its close after the client saw EOF
                for reporter in ("source", "destination"):
                    await eventually(lambda: metrics.value("istio_tcp_connections_closed_total",
                                                           reporter=reporter) == 1)
                    assert metrics.value("istio_tcp_received_bytes_total", reporter=reporter) == len(payload), reporter
                    assert metrics.value("istio_tcp_sent_bytes_total", reporter=reporter) == len(payload) + len(b_ip) + 1
                    assert metrics.value("istio_tcp_connections_closed_total", reporter=reporter) == 1

                # 2. DENY on client's principal: client refused, "other" still gets through
                current["state"] = mesh_state(a_ip, b_ip, c_ip, [pol(
                    "deny-client", "DENY", selector={"app": "web"},
                    rules=[rule(principals=["cluster.local/ns/default/sa/client"])])])
                assert await client(a_fd, map_fd, (VIP, 80), b"hi") in (b"", b"<reset>")
                assert await client(c_fd, map_fd, (VIP, 80), b"hi") == f"{b_ip}\n".encode() + b"hi"
                assert metrics.value("istio_tcp_connections_opened_total", reporter="destination",
                                     source_principal=f"{TD}/ns/default/sa/other") == 1

                # 3. passthrough: a destination outside the mesh is reached directly from A's IP
                got = await client(a_fd, map_fd, (lab.node_ip, 9090), b"plain")
                assert got == f"{a_ip}\n".encode() + b"plain"
                assert metrics.value("istio_tcp_connections_opened_total", reporter="source",
                                     connection_security_policy="unknown") == 1

                # 4. no origdst entry: refused, nothing crashes
                raw = netns.socket_in(a_fd)
                sock = trio.socket.from_stdlib_socket(raw)
                await sock.connect(("127.0.0.1", 15001))
                async with trio.SocketStream(sock) as s:
                    assert await s.receive_some(10) == b""

                # 5. remove: an open outbound connection keeps working, new ones are refused
                current["state"] = mesh_state(a_ip, b_ip, c_ip)
                raw = netns.socket_in(a_fd)
                raw.bind(("127.0.0.1", 0))
                origdst.put(map_fd, netns.netns_cookie(raw), raw.getsockname()[1], VIP, 80)
                sock = trio.socket.from_stdlib_socket(raw)
                await sock.connect(("127.0.0.1", 15001))
                async with trio.SocketStream(sock) as open_conn:
                    assert await open_conn.receive_some(100) == f"{b_ip}\n".encode()
                    assert await pods.remove("default/client", drain_timeout=10)
                    await trio.sleep(0.1)
                    with pytest.raises(OSError):
                        await client(a_fd, map_fd, (VIP, 80), b"x")
                    await open_conn.send_all(b"during drain")
                    got = b""
                    while len(got) < len(b"during drain"):
                        got += await open_conn.receive_some(100)
                    assert got == b"during drain"
                    await open_conn.send_eof()
                    assert await open_conn.receive_some(100) == b""
                await trio.sleep(0.1)
                with pytest.raises(OSError):
                    await client(a_fd, map_fd, (VIP, 80), b"x")
                n.cancel_scope.cancel()
    finally:
        os.close(map_fd)
