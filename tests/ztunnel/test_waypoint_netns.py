"""Waypoint traffic through real netns, veth, TLS and the origdst map: a fake waypoint (a plain
HBONE server with its own workload certificate on the waypoint pod's address, relaying to the
destination's ztunnel as itself) sees the Service VIP authority and the client's identity; the
destination's ztunnel accepts only the waypoint's identity for a waypoint-fronted pod."""
from __future__ import annotations

import os
import socket
from dataclasses import replace

import pytest
import trio

from meshcore import netns
from meshcore.certs import CertificateManager
from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.errors import HboneTunnelRefused
from meshcore.hbone.server import serve_hbone
from meshcore.state import State
from ztunnel import origdst, route
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo
from ztunnel.pods import PodManager

from zt_ca import TestCA
from zt_helpers import pol, rule, svc, wl
from test_proxy_netns import client, echo_server

TD = "spiffe://cluster.local"
VIP, PLAIN_VIP = "10.96.0.10", "10.96.0.20"
CLIENT, WEB, WAYPOINT = (f"{TD}/ns/default/sa/{sa}" for sa in ("client", "web", "waypoint"))


def world(a_ip, b_ip, w_ip, c_ip, *, policies=(), waypoint=True):
    """client (a), web (b, Service web: uses the waypoint), waypoint replica (w), db (c,
    Service db: no waypoint)."""
    web = svc("web", VIP, ports=((80, 8080),))
    replica = replace(wl("waypoint-0", w_ip, sa="waypoint", mesh=False), waypoint_of="waypoint")
    return State(workloads=[wl("client", a_ip), wl("web", b_ip, sa="web", app="web"), replica,
                            wl("db", c_ip, sa="db", app="db")],
                 services=[replace(web, waypoint="waypoint" if waypoint else None),
                           svc("db", PLAIN_VIP, ports=((80, 8080),), app="db")],
                 policies=list(policies), enrolled_namespaces=frozenset({"default"}),
                 gateways=frozenset({("default", "waypoint")}))


async def refused(fd, map_fd, dst) -> bool:
    """ztunnel closes a refused connection at once: the app sees EOF, a reset, or a broken send."""
    try:
        return await client(fd, map_fd, dst, b"x") in (b"", b"<reset>")
    except trio.BrokenResourceError:
        return True


async def _pump(src, dst) -> None:
    while data := await src.receive_some(65536):
        await dst.send_all(data)
    await dst.send_eof()


async def fake_waypoint(fd, ip, certs, seen, upstream, *, task_status=trio.TASK_STATUS_IGNORED):
    """An HBONE server at ip:15008 in the waypoint pod's netns presenting WAYPOINT; each
    tunnel is recorded, then relayed over HBONE, as the waypoint, to `upstream()`."""
    raw = netns.socket_in(fd)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind((ip, 15008))
    raw.listen(16)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    factory = PodInfo("default", "waypoint-0", ip, "waypoint", fd).socket_factory
    async with HboneClientPool(certs.ssl_context_for, factory) as pool:
        async def handle(tunnel):
            seen.append((tunnel.authority, tunnel.peer_identity))
            hb, authority, expected = upstream()
            up = await pool.connect(hb, authority, expected, WAYPOINT)
            down = await tunnel.accept()
            async with trio.open_nursery() as n:
                n.start_soon(_pump, down, up)
                n.start_soon(_pump, up, down)
            await up.aclose()

        await serve_hbone([listener], lambda: certs.ssl_context_for(WAYPOINT, server=True), handle,
                          task_status=task_status)


async def test_service_with_waypoint_goes_through_it_and_pods_behind_it_refuse_others(lab):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    _, w_ip, w_fd = lab.pod("w", 3)
    _, c_ip, c_fd = lab.pod("c", 4)
    map_fd = origdst.create_origdst_map(1024)
    current = {"state": world(a_ip, b_ip, w_ip, c_ip)}
    metrics = Metrics()
    certs = CertificateManager(TestCA(), "cluster.local")
    inputs = ProxyInputs(state=lambda: current["state"], certs=certs, metrics=metrics,
                         origdst_fd=lambda: map_fd, pick=route.RoundRobin(), drain_timeout=2, connect_timeout=3,
                         config_grace=0.3)   # a refused bypass waits this long for a newer snapshot
    seen: list[tuple[tuple, str]] = []
    # what the fake waypoint dials: the backend it picked (web's pod), as Istio's would
    to_web = lambda: ((b_ip, 15008), f"{b_ip}:8080", WEB)  # noqa: E731
    try:
        with trio.fail_after(40):
            async with trio.open_nursery() as n:
                await n.start(certs.run)
                certs.want(WAYPOINT)
                await certs.wait_ready(WAYPOINT)
                await n.start(fake_waypoint, w_fd, w_ip, certs, seen, to_web)
                await n.start(echo_server, b_fd, "0.0.0.0", 8080)
                await n.start(echo_server, c_fd, "0.0.0.0", 8080)
                pods = PodManager(inputs, n)
                for name, ip_, sa, fd in (("client", a_ip, "client", a_fd), ("web", b_ip, "web", b_fd),
                                          ("db", c_ip, "db", c_fd)):
                    await pods.add(PodInfo("default", name, ip_, sa, os.dup(fd)))
                for identity in (CLIENT, WEB):
                    await certs.wait_ready(identity)

                # 1. the Service's VIP: HBONE to the waypoint, authority the VIP, source the client;
                #    the destination's ztunnel then sees the waypoint's identity
                payload = os.urandom(100_000)
                got = await client(a_fd, map_fd, (VIP, 80), payload)
                assert got == f"{b_ip}\n".encode() + payload
                assert seen == [((VIP, 80), CLIENT)]
                assert metrics.value("istio_tcp_connections_opened_total", reporter="source",
                                     source_workload="client", destination_workload="waypoint-0",
                                     destination_principal=WAYPOINT, destination_service="default/web") == 1
                assert metrics.value("istio_tcp_connections_opened_total", reporter="destination",
                                     destination_workload="web", source_principal=WAYPOINT) == 1

                # 2. bypass: the web pod's IP goes through the waypoint too, authority the pod IP
                got = await client(a_fd, map_fd, (b_ip, 8080), b"direct?")
                assert got == f"{b_ip}\n".encode() + b"direct?"
                assert seen[-1] == ((b_ip, 8080), CLIENT)

                # 3. a Service without a waypoint stays on the L4 path (the waypoint sees nothing)
                got = await client(a_fd, map_fd, (PLAIN_VIP, 80), b"l4")
                assert got == f"{c_ip}\n".encode() + b"l4" and len(seen) == 2
                assert metrics.value("istio_tcp_connections_opened_total", reporter="destination",
                                     destination_workload="db", source_principal=CLIENT) == 1

                # 4. defense in depth: a client that skips the waypoint (stale view, or hostile)
                #    is refused by web's ztunnel, counted, named
                factory = PodInfo("default", "client", a_ip, "client", a_fd).socket_factory
                async with HboneClientPool(certs.ssl_context_for, factory) as pool:
                    with pytest.raises(HboneTunnelRefused) as e:
                        await pool.connect((b_ip, 15008), f"{b_ip}:8080", WEB, CLIENT)
                    assert e.value.status == 403 and "behind waypoint default/waypoint" in e.value.reason
                    assert metrics.value("trellis_waypoint_bypass_refused_total", destination_workload="web",
                                         source_principal=CLIENT) == 1
                    # db has no waypoint in front: the same client is welcome there
                    s = await pool.connect((c_ip, 15008), f"{c_ip}:8080", f"{TD}/ns/default/sa/db", CLIENT)
                    assert (await s.receive_some(100)).startswith(c_ip.encode())
                    await s.aclose()

                # 5. L7 placement: a path rule targeting the waypoint-fronted Service is the
                #    waypoint's; web's ztunnel does not deny the connection for it
                l7 = pol("no-admin", "DENY", refs=[("Service", "web")], rules=[rule(paths=["/admin"])])
                current["state"] = world(a_ip, b_ip, w_ip, c_ip, policies=[l7])
                assert await client(a_fd, map_fd, (VIP, 80), b"l7") == f"{b_ip}\n".encode() + b"l7"
                # without the waypoint the same policy is applied at L4: the whole connection is denied
                current["state"] = world(a_ip, b_ip, w_ip, c_ip, policies=[l7], waypoint=False)
                assert await refused(a_fd, map_fd, (VIP, 80))
                assert len(seen) == 3

                # 6. no replica left: refused with advice, the waypoint is not dialled
                current["state"] = replace(world(a_ip, b_ip, w_ip, c_ip),
                                           workloads=[w for w in world(a_ip, b_ip, w_ip, c_ip).workloads
                                                      if w.waypoint_of is None])
                assert await refused(a_fd, map_fd, (VIP, 80))
                assert len(seen) == 3
                n.cancel_scope.cancel()
    finally:
        os.close(map_fd)
