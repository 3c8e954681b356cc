"""The whole node: our eBPF capture + node agent + ztunnel (in-process), a real app
process in the pod's cgroup dialing a Service VIP, answered by a pod behind HBONE."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from meshcore import netns
from meshcore.resources import from_dict
from nodeagent.agent import NodeAgent
from nodeagent.handoff import HandoffClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ztunnel"))
from zt_ca import TestCA  # noqa: E402  (the ztunnel tests' real CA: signs CSRs like the control plane)

TD = "spiffe://cluster.local"


API = {"Namespace": "v1", "Service": "v1"}


def Res(kind, namespace, name, labels=None, spec=None):
    """A real, validated resource, as the control plane would push it."""
    meta = {"name": name, "labels": labels or {}, **({"namespace": namespace} if namespace else {})}
    doc = {"apiVersion": API.get(kind, "trellis.dev/v1alpha1"), "kind": kind, "metadata": meta}
    if spec is not None:
        doc["spec"] = spec
    return from_dict(doc)


class StaticControlPlane:
    """The ControlPlaneClient interface: one fixed view, a real CA behind sign()."""

    def __init__(self, resources):
        self.ca, self.resources = TestCA(), resources
        self.connected, self.last_contact, self.last_error = True, None, None

    async def sign(self, csr_pem):
        return await self.ca.sign(csr_pem)

    async def watch(self, on_update, *, task_status=trio.TASK_STATUS_IGNORED):
        on_update({(r.kind, r.namespace or "", r.name): r for r in self.resources}, 1)
        task_status.started()
        await trio.sleep_forever()


ECHO_APP = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
print("up", flush=True)
for _ in range(50):
    c, _ = s.accept()
    with c:
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        c.sendall(b"echo:" + data)
"""

APP = """
import socket
s = socket.create_connection(("10.96.0.10", 80), timeout=10)
s.sendall(b"hello")
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode(), flush=True)
"""


def plaintext_reaches(pod) -> bool:
    """A direct (non-mesh) connection from the client pod's netns to web:8080."""
    fd = netns.open_netns(pod.netns)
    try:
        s = netns.socket_in(fd)
    finally:
        os.close(fd)
    with s:
        s.settimeout(1.5)
        try:
            s.connect((pod.peer_ip, 8080))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("strict", [False, True])
async def test_app_reaches_service_vip_through_capture_and_ztunnel(programs, pod, tmp_path, strict):
    from ztunnel.app import Config, Ztunnel

    holder = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")  # the client pod's process
    web = pod.spawn(ECHO_APP, cgroup=pod.other_cgroup, netns=pod.peer_netns)  # the server pod's app
    assert holder.stdout.readline().strip() == "up" and web.stdout.readline().strip() == "up"
    resources = [
        Res("Namespace", None, "default", labels={"trellis.dev/dataplane-mode": "ambient"}),
        Res("WorkloadEntry", "default", "client", spec={"address": pod.pod_ip, "serviceAccount": "client",
            "node": "n1", "labels": {"app": "client"}, "networkNamespace": pod.netns}),
        Res("WorkloadEntry", "default", "web", spec={"address": pod.peer_ip, "serviceAccount": "web",
            "node": "n1", "labels": {"app": "web"}, "networkNamespace": pod.peer_netns}),
        Res("Service", "default", "web", spec={"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                                               "ports": [{"port": 80, "targetPort": 8080}]}),
    ]
    if strict:
        resources.append(Res("PeerAuthentication", "default", "web", spec={
            "selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}))
    cp = StaticControlPlane(resources)
    run_dir = tmp_path / "run"
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=tmp_path, run_dir=run_dir,
                 admin=("127.0.0.1", 0), metrics=("127.0.0.1", 0), ready=("127.0.0.1", 0), drain_timeout=1)
    zt = Ztunnel(cfg, cp)
    agent = NodeAgent("n1", programs, HandoffClient(run_dir / "ztunnel.sock", "n1", programs.origdst_fd))
    try:
        with trio.fail_after(40):
            async with trio.open_nursery() as n:
                await n.start(lambda task_status: zt.run(handle_signals=False, task_status=task_status))
                await n.start(cp.watch, agent.on_update)
                await n.start(agent.run)
                while len(agent.enrolled) < 2 or len(zt.pods.pods) < 2:
                    await trio.sleep(0.05)
                assert agent.cgroup_of == {"default/client": pod.cgroup, "default/web": pod.other_cgroup}
                for sa in ("client", "web"):
                    await zt.certs.wait_ready(f"{TD}/ns/default/sa/{sa}")

                def enter_cgroup():
                    Path(pod.cgroup, "cgroup.procs").write_text(str(os.getpid()))

                before = len(programs.origdst)  # other tests may leave unconsumed entries
                app = await trio.run_process(["ip", "netns", "exec", pod.netns, sys.executable, "-c", APP],
                                             capture_stdout=True, capture_stderr=True, check=False,
                                             preexec_fn=enter_cgroup)
                assert app.returncode == 0, app.stderr.decode()
                # 10.96.0.10 has no route and nothing listens on :80: only the capture plus
                # ztunnel's Service resolution (80 -> web:8080 over HBONE) can answer.
                assert app.stdout.decode().strip() == "echo:hello"
                # STRICT (web only): plaintext around the mesh is dropped, HBONE delivery is not
                assert plaintext_reaches(pod) is not strict
                assert len(programs.origdst) == before  # ztunnel consumed the entry sockops wrote
                await zt.shutdown(n.cancel_scope)
    finally:
        agent.shutdown()
        await agent.handoff.aclose()
