"""ztunnel as a whole, in-process: ZDS handoff, config from a watch, admin, metrics, drain."""
from __future__ import annotations

import json
import os
import socket

import trio


from meshcore.resources import parse_documents
from meshcore.wire import zds as wire
from ztunnel import origdst
from ztunnel.app import Config, Ztunnel

from zt_ca import TestCA
from test_proxy_netns import client, echo_server
from test_zds import request as zds_request

TD = "spiffe://cluster.local"


class StaticControlPlane:
    """Same interface as meshcore.cpclient.ControlPlaneClient: a test CA signs, watch delivers a fixed view."""

    def __init__(self, resources, version=1):
        self.ca = TestCA()
        self.resources, self.version = resources, version
        self.connected, self.last_contact, self.last_error = False, None, None

    async def sign(self, csr_pem):
        if not self.connected:
            raise ConnectionError("control plane unreachable")
        return await self.ca.sign(csr_pem)

    async def watch(self, on_update, *, task_status=trio.TASK_STATUS_IGNORED):
        self.connected = True
        on_update({r.key: r for r in self.resources}, self.version)
        task_status.started()
        await trio.sleep_forever()


async def http(port, path):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def two_pods(a_ip, b_ip, vip="10.96.0.10"):
    """client (a_ip) and web (b_ip) in an ambient namespace, web behind a Service at `vip`."""
    text = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{trellis.dev/dataplane-mode: ambient}}}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: client, namespace: default}}
spec: {{address: {a_ip}, serviceAccount: client, node: n1, labels: {{app: client}}}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: web, namespace: default}}
spec: {{address: {b_ip}, serviceAccount: web, node: n1, labels: {{app: web}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: {vip}, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""
    loaded = parse_documents(text, "test.yaml")
    assert not loaded.errors, [str(e) for e in loaded.errors]
    return loaded.resources


async def test_ztunnel_end_to_end_in_process(lab, tmp_path):
    _, a_ip, a_fd = lab.pod("a", 1)
    _, b_ip, b_fd = lab.pod("b", 2)
    resources = two_pods(a_ip, b_ip)
    cp = StaticControlPlane(resources, version=7)
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=tmp_path, run_dir=tmp_path / "run",
                 admin=("127.0.0.1", 0), metrics=("127.0.0.1", 0), ready=("127.0.0.1", 0), drain_timeout=2)
    zt = Ztunnel(cfg, cp)
    map_fd = origdst.create_origdst_map(64)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                await n.start(echo_server, b_fd, "0.0.0.0", 8080)
                await n.start(lambda task_status: zt.run(handle_signals=False, task_status=task_status))
                port = {k: l.socket.getsockname()[1] for k, l in zt.listeners.items()}
                zds = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                await zds.connect(str(tmp_path / "run" / "ztunnel.sock"))
                assert (await zds_request(zds, wire.Hello(node="n1"), [map_fd]))[0]["ok"]
                for name, ip_, fd in (("client", a_ip, a_fd), ("web", b_ip, b_fd)):
                    add = wire.AddPod(namespace="default", name=name, address=ip_, service_account=name)
                    r, back = await zds_request(zds, add, [fd])
                    assert r["ok"] and len(back) == len(r["listeners"]) == 3  # ztunnel bound them: copies back
                    for b in back:
                        os.close(b)
                for name in ("client", "web"):
                    await zt.certs.wait_ready(f"{TD}/ns/default/sa/{name}")

                assert await client(a_fd, map_fd, ("10.96.0.10", 80), b"hello") == f"{b_ip}\n".encode() + b"hello"

                status, body = await http(port["ready"], "/healthz/ready")
                assert status == 200 and json.loads(body)["version"] == 7
                status, body = await http(port["admin"], "/config_dump")
                dump = json.loads(body)
                assert status == 200 and dump["state"]["version"] == 7
                assert {w["uid"] for w in dump["state"]["workloads"]} == {"default/client", "default/web"}
                assert {p["uid"] for p in dump["pods"]} == {"default/client", "default/web"}
                certs = json.loads((await http(port["admin"], "/certs"))[1])
                assert {c["identity"] for c in certs} == {f"{TD}/ns/default/sa/client", f"{TD}/ns/default/sa/web"}
                assert all(c["state"] == "valid" and c["serial"] for c in certs)
                health = json.loads((await http(port["admin"], "/healthz"))[1])
                assert health["control_plane"] == "connected" and health["version"] == 7
                services = json.loads((await http(port["admin"], "/services"))[1])
                assert services[0]["endpoints"] == ["default/web"]
                text = (await http(port["metrics"], "/metrics"))[1].decode()
                assert 'istio_tcp_connections_opened_total{' in text and 'reporter="destination"' in text
                assert "trellis_config_version 7.0" in text

                # the control plane goes away: last snapshot and current certs keep serving
                cp.connected = False
                await trio.sleep(1.2)
                health = json.loads((await http(port["admin"], "/healthz"))[1])
                assert health["control_plane"].startswith("unreachable since")
                assert "trellis_control_plane_connected 0.0" in (await http(port["metrics"], "/metrics"))[1].decode()
                assert await client(a_fd, map_fd, ("10.96.0.10", 80), b"again") == f"{b_ip}\n".encode() + b"again"

                # shutdown drains and returns
                zds.close()
                await zt.shutdown(n.cancel_scope)
    finally:
        os.close(map_fd)
