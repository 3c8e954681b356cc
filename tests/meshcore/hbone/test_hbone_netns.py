"""HBONE between two network namespaces joined by a veth, as between two pods.

The server's listener and the client's sockets are created inside the namespaces with
meshcore.netns, the way ztunnel owns sockets in each pod's netns.
"""
from __future__ import annotations

import os
import socket
import subprocess

import pytest
import trio

from meshcore import netns
from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.errors import HboneConnectTimeout
from meshcore.hbone.server import serve_hbone

from .certs import client_ctx, server_ctx
from .conftest import CLIENT_ID, SERVER_ID, echo

TAG = f"{os.getpid() % 100000}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_pods():
    a, b = f"tt-hbone-{TAG}-a", f"tt-hbone-{TAG}-b"
    va, vb = f"tthb{TAG}a", f"tthb{TAG}b"
    created = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", a, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, v4, v6 in ((a, va, "10.254.77.1/30", "fd00:77::1/64"), (b, vb, "10.254.77.2/30", "fd00:77::2/64")):
            ip("-n", ns, "addr", "add", v4, "dev", dev)
            ip("-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        fds = [netns.open_netns(ns) for ns in (a, b)]
        try:
            yield fds
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        for ns in created:   # deleting a netns also deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def listener_in(fd: int, family: int, host: str) -> trio.SocketListener:
    raw = netns.socket_in(fd, family)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind((host, 15008))   # the real HBONE port: this netns is ours alone
    raw.listen(128)
    return trio.SocketListener(trio.socket.from_stdlib_socket(raw))


@pytest.mark.parametrize("family,server_ip,client_ip,authority", [
    (socket.AF_INET, "10.254.77.2", "10.254.77.1", "10.254.77.2:8080"),
    (socket.AF_INET6, "fd00:77::2", "fd00:77::1", "[fd00:77::2]:8080"),
])
async def test_tunnel_between_pod_namespaces(nursery, two_pods, client_bundle, server_bundle,
                                             family, server_ip, client_ip, authority):
    fd_a, fd_b = two_pods
    peers = []

    async def record(req):
        peers.append((req.peer_address[0], req.peer_identity, req.authority))
        await echo(req)

    ctx = server_ctx(server_bundle)
    listener = listener_in(fd_b, family, "::" if family == socket.AF_INET6 else "0.0.0.0")
    await nursery.start(lambda task_status: serve_hbone(listener, lambda: ctx, record, task_status=task_status))
    made = []

    def in_pod_a(fam: int) -> socket.socket:
        made.append(fam)
        return netns.socket_in(fd_a, fam)

    async with HboneClientPool(lambda src: client_ctx(client_bundle), socket_factory=in_pod_a) as pool:
        with trio.fail_after(20):
            s = await pool.connect((server_ip, 15008), authority, SERVER_ID, CLIENT_ID)
            payload = os.urandom(3 * 1024 * 1024)
            async with trio.open_nursery() as n:
                async def send():
                    await s.send_all(payload)
                    await s.send_eof()
                n.start_soon(send)
                got = bytearray()
                while chunk := await s.receive_some():
                    got += chunk
            await s.aclose()
    assert bytes(got) == payload
    assert made == [family]
    assert peers == [(client_ip, CLIENT_ID, (server_ip, 8080))]


async def test_connect_timeout_when_a_firewall_drops_hbone(two_pods, client_bundle):
    fd_a, _ = two_pods
    # A NetworkPolicy-like drop of SYNs to 15008, inside the client pod's own netns (gone with it).
    rules = ("add table inet tt_hbone\n"
             "add chain inet tt_hbone out { type filter hook output priority 0; }\n"
             "add rule inet tt_hbone out tcp dport 15008 drop\n")
    subprocess.run(["ip", "netns", "exec", f"tt-hbone-{TAG}-a", "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)
    async with HboneClientPool(lambda src: client_ctx(client_bundle), lambda fam: netns.socket_in(fd_a, fam),
                               connect_timeout=0.5) as pool:
        with pytest.raises(HboneConnectTimeout, match="connection to 10.254.77.2:15008 timed out, maybe a "
                                                      "NetworkPolicy or firewall blocks HBONE port 15008"):
            await pool.connect(("10.254.77.2", 15008), "10.254.77.2:8080", SERVER_ID, CLIENT_ID)
        assert pool.connections_failed == 1
