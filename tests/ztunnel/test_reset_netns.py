"""A reset crosses the mesh as a reset (issue 13, defect 4): real netns, TLS, HBONE, two ztunnel pods.

App RST -> RST_STREAM(CONNECT_ERROR) over HBONE -> TCP RST to the client, and the other
way round; before, each side saw an orderly EOF and could not tell failure from success.
"""
from __future__ import annotations

import os
import socket
import struct

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
from zt_helpers import wl

TD = "spiffe://cluster.local"
PORT = 8080


def rst_close(sock) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def connect_through_mesh(fd: int, map_fd: int, dst: tuple[str, int]) -> trio.socket.SocketType:
    """A pod app's connect(), captured as the eBPF program would (origdst recorded first)."""
    raw = netns.socket_in(fd)
    raw.bind(("127.0.0.1", 0))
    origdst.put(map_fd, netns.netns_cookie(raw), raw.getsockname()[1], *dst)
    sock = trio.socket.from_stdlib_socket(raw)
    await sock.connect(("127.0.0.1", 15001))
    return sock


async def recv_exactly(sock, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = await sock.recv(n - len(got))
        assert chunk, f"EOF after {got!r}"
        got += chunk
    return got


@pytest.mark.parametrize("who_resets", ["app", "client"])
async def test_a_reset_reaches_the_other_end_as_econnreset(lab, who_resets):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    map_fd = origdst.create_origdst_map(64)
    state = State(workloads=[wl("client", a_ip), wl("web", b_ip)], enrolled_namespaces=frozenset({"default"}))
    ca = TestCA()
    certs = CertificateManager(ca, "cluster.local")
    inputs = ProxyInputs(state=lambda: state, certs=certs, metrics=Metrics(), origdst_fd=lambda: map_fd,
                         pick=route.first, drain_timeout=1)
    app_saw: list[str] = []
    raw = netns.socket_in(b_fd)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind(("0.0.0.0", PORT))
    raw.listen(4)
    listener = trio.socket.from_stdlib_socket(raw)

    async def app() -> None:
        conn, _ = await listener.accept()
        assert await recv_exactly(conn, 5) == b"hello"
        if who_resets == "app":
            rst_close(conn)
            return
        await conn.send(b"ok")
        try:
            app_saw.append(repr(await conn.recv(100)))
        except ConnectionResetError:
            app_saw.append("ECONNRESET")
        conn.close()

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(certs.run)
                pods = PodManager(inputs, n)
                for name, ip_, fd in (("client", a_ip, a_fd), ("web", b_ip, b_fd)):
                    await pods.add(PodInfo("default", name, ip_, name, os.dup(fd)))
                for name in ("client", "web"):
                    await certs.wait_ready(f"{TD}/ns/default/sa/{name}")
                n.start_soon(app)
                sock = await connect_through_mesh(a_fd, map_fd, (b_ip, PORT))
                await sock.send(b"hello")
                if who_resets == "app":
                    with pytest.raises(ConnectionResetError):
                        await sock.recv(100)   # an EOF here (b"") was the defect
                    sock.close()
                else:
                    assert await recv_exactly(sock, 2) == b"ok"
                    rst_close(sock)
                    while not app_saw:
                        await trio.sleep(0.01)
                    assert app_saw == ["ECONNRESET"]   # b'' (a clean close) was the defect
                n.cancel_scope.cancel()
    finally:
        listener.close()
        os.close(map_fd)
