"""Inbound refusals seen by a real HBONE client: wrong authority (400), no app (503), authz (403), drain."""
from __future__ import annotations

import os

import pytest
import trio

from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.errors import HboneTunnelRefused
from ztunnel import route
from meshcore.certs import CertificateManager
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo
from ztunnel.pods import PodManager
from meshcore.state import State

from zt_ca import TestCA
from zt_helpers import pol, rule, wl
from test_proxy_netns import client, echo_server

TD = "spiffe://cluster.local"
WEB = f"{TD}/ns/default/sa/web"
CLIENT = f"{TD}/ns/default/sa/client"


async def test_inbound_refusals_name_the_cause(lab):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    state = State(workloads=[wl("client", a_ip), wl("web", b_ip)], enrolled_namespaces=frozenset({"default"}),
                  policies=[pol("only-8080", selector={"app": "web"}, rules=[rule(ports=[8080, 9999])])])
    ca = TestCA()
    certs = CertificateManager(ca, "cluster.local")
    inputs = ProxyInputs(state=lambda: state, certs=certs, metrics=Metrics(), origdst_fd=lambda: None,
                         pick=route.first, connect_timeout=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(certs.run)
            await n.start(echo_server, b_fd, "0.0.0.0", 8080)
            pods = PodManager(inputs, n)
            await pods.add(PodInfo("default", "web", b_ip, "web", os.dup(b_fd)))
            certs.want(CLIENT)
            await certs.wait_ready(WEB)
            await certs.wait_ready(CLIENT)
            pod_a = PodInfo("default", "client", a_ip, "client", a_fd)
            async with HboneClientPool(certs.ssl_context_for, pod_a.socket_factory) as pool:
                hb = (b_ip, 15008)
                s = await pool.connect(hb, f"{b_ip}:8080", WEB, CLIENT)
                await s.send_all(b"ping")
                assert (await s.receive_some(100)).startswith(b_ip.encode())
                await s.aclose()
                with pytest.raises(HboneTunnelRefused) as e:
                    await pool.connect(hb, f"{a_ip}:8080", WEB, CLIENT)
                assert e.value.status == 400 and "not this pod's address" in e.value.reason
                with pytest.raises(HboneTunnelRefused) as e:
                    await pool.connect(hb, f"{b_ip}:9999", WEB, CLIENT)
                assert e.value.status == 503 and "application on port 9999" in e.value.reason
                with pytest.raises(HboneTunnelRefused) as e:
                    await pool.connect(hb, f"{b_ip}:22", WEB, CLIENT)
                assert e.value.status == 403 and "default/only-8080" in e.value.reason

                # an open tunnel survives remove() until it finishes; new tunnels are not accepted
                s = await pool.connect(hb, f"{b_ip}:8080", WEB, CLIENT)
                await pods.remove("default/web", drain_timeout=10)
                await trio.sleep(0.2)
                await s.send_all(b"still here")
                got = bytearray()
                while len(got) < len(b_ip) + 1 + len(b"still here"):
                    got += await s.receive_some(100)
                assert got.endswith(b"still here")
                await s.send_eof()
                await s.aclose()
            n.cancel_scope.cancel()
