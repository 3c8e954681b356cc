"""Rapid reset against a real ztunnel pod (issue 13, defect 1): real netns, TLS, HBONE.

A client pod with a valid mesh certificate sends 20,000 HEADERS(CONNECT)+RST_STREAM
pairs to the destination pod's ztunnel on :15008, while the same client pod's app keeps
opening connections through the mesh to the destination app. ztunnel must answer with
GOAWAY(ENHANCE_YOUR_CALM), count one refusal in its metrics, dial the app for none of the
reset tunnels beyond the first few, and keep serving the other connections.
"""
from __future__ import annotations

import os
import socket

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from meshcore import netns
from meshcore.hbone.limits import ENHANCE_YOUR_CALM
from ztunnel import origdst, route
from meshcore.certs import CertificateManager
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo
from ztunnel.pods import PodManager
from meshcore.state import State

from zt_ca import TestCA
from zt_helpers import wl
from test_reset_netns import connect_through_mesh, recv_exactly

TD = "spiffe://cluster.local"
CLIENT = f"{TD}/ns/default/sa/client"
PORT = 8080


async def rapid_reset(a_fd: int, b_ip: str, ctx, pairs: int = 20_000) -> int:
    raw = netns.socket_in(a_fd)
    sock = trio.socket.from_stdlib_socket(raw)
    await sock.connect((b_ip, 15008))
    tls = trio.SSLStream(trio.SocketStream(sock), ctx, server_hostname=None)
    await tls.do_handshake()
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h.initiate_connection()
    goaway: list[int] = []

    async def read() -> None:
        try:
            while not goaway and (data := await tls.receive_some(65536)):
                goaway.extend(ev.error_code for ev in h.receive_data(data)
                              if isinstance(ev, h2.events.ConnectionTerminated))
        except (trio.BrokenResourceError, h2.exceptions.ProtocolError):
            pass

    async with trio.open_nursery() as n:
        n.start_soon(read)
        try:
            for i in range(pairs):
                sid = h.get_next_available_stream_id()
                h.send_headers(sid, [(":method", "CONNECT"), (":authority", f"{b_ip}:{PORT}")])
                h.reset_stream(sid)
                if i % 1000 == 999:
                    await tls.send_all(h.data_to_send())
        except (trio.BrokenResourceError, h2.exceptions.ProtocolError):
            pass   # ztunnel sent GOAWAY and hung up: expected
    await trio.aclose_forcefully(tls)
    assert goaway, "ztunnel never sent GOAWAY"
    return goaway[0]


async def test_rapid_reset_against_ztunnel(lab):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    map_fd = origdst.create_origdst_map(64)
    state = State(workloads=[wl("client", a_ip), wl("web", b_ip)], enrolled_namespaces=frozenset({"default"}))
    certs = CertificateManager(TestCA(), "cluster.local")
    metrics = Metrics()
    inputs = ProxyInputs(state=lambda: state, certs=certs, metrics=metrics, origdst_fd=lambda: map_fd,
                         pick=route.first, drain_timeout=1)
    raw = netns.socket_in(b_fd)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind(("0.0.0.0", PORT))
    raw.listen(1024)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    dials = [0]

    async def echo(stream: trio.SocketStream) -> None:
        dials[0] += 1
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    done: list[int] = []

    async def legit(rounds: int) -> None:
        for i in range(rounds):
            sock = await connect_through_mesh(a_fd, map_fd, (b_ip, PORT))
            with sock:
                await sock.send(b"ping!")
                assert await recv_exactly(sock, 5) == b"ping!"
            done.append(i)
            await trio.sleep(0.01)

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                await n.start(certs.run)
                n.start_soon(trio.serve_listeners, echo, [listener])
                pods = PodManager(inputs, n)
                for name, ip_, fd in (("client", a_ip, a_fd), ("web", b_ip, b_fd)):
                    await pods.add(PodInfo("default", name, ip_, name, os.dup(fd)))
                for name in ("client", "web"):
                    await certs.wait_ready(f"{TD}/ns/default/sa/{name}")
                await legit(5)
                async with trio.open_nursery() as attack:
                    attack.start_soon(legit, 40)
                    code = await rapid_reset(a_fd, b_ip, certs.ssl_context_for(CLIENT))
                assert code == ENHANCE_YOUR_CALM
                assert len(done) == 45   # every other connection through the same ztunnel succeeded
                assert metrics.value("trellis_hbone_limit_refusals_total") == 1
                assert dials[0] < 45 + 200, dials[0]   # of 20,000 reset tunnels, at most the first few dialled
                n.cancel_scope.cancel()
    finally:
        os.close(map_fd)
