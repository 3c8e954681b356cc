"""STRICT ingress: plaintext from outside the pod is dropped, loopback delivery is not;
and our programs coexist with another program on the same cgroup (multi-attach)."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from meshcore.netns import open_netns, socket_in
from na_helpers import bpftool_show, client_code, listener, reply

APP = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 8080))  # dual-stack: one listener for both families
s.listen(16)
print("ready", flush=True)
for _ in range(100):
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""


def try_connect(netns: str, host: str, port: int, timeout: float = 1.5) -> bytes | None:
    """What the app sends, or None if the connection could not be made."""
    fd = open_netns(netns)
    try:
        s = socket_in(fd, socket.AF_INET6 if ":" in host else socket.AF_INET)
    finally:
        os.close(fd)
    with s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            return s.recv(16)
        except (TimeoutError, ConnectionError, OSError):
            return None


@pytest.fixture
def app(pod):
    proc = pod.spawn(APP)
    assert proc.stdout.readline().strip() == "ready"
    return pod


def test_strict_drops_plaintext_from_outside_and_allows_loopback(programs, app):
    pod = app
    assert try_connect(pod.peer_netns, pod.pod_ip, 8080) == b"hi"  # reachable before STRICT
    assert try_connect(pod.peer_netns, pod.pod_ip6, 8080) == b"hi"
    programs.attach(pod.cgroup, strict=True)
    try:
        assert try_connect(pod.peer_netns, pod.pod_ip, 8080) is None
        assert try_connect(pod.netns, "127.0.0.1", 8080) == b"hi"
        assert try_connect(pod.netns, pod.pod_ip, 8080) == b"hi"  # local delivery goes over lo
        assert try_connect(pod.peer_netns, pod.pod_ip6, 8080) is None
        assert try_connect(pod.netns, "::1", 8080) == b"hi"
        assert try_connect(pod.netns, pod.pod_ip6, 8080) == b"hi"
        programs.set_strict(pod.cgroup, False)
        assert try_connect(pod.peer_netns, pod.pod_ip, 8080) == b"hi"
        assert {a.program for a in programs.attachments(pod.cgroup)} == {
            "trellis_connect4", "trellis_connect6", "trellis_sockops"}
        programs.set_strict(pod.cgroup, True)
        assert try_connect(pod.peer_netns, pod.pod_ip, 8080) is None
    finally:
        programs.detach(pod.cgroup)
    assert try_connect(pod.peer_netns, pod.pod_ip, 8080) == b"hi"


def test_strict_lets_replies_to_the_apps_own_connections_through(programs, pod):
    programs.attach(pod.cgroup, strict=True)
    try:
        with listener(pod.peer_netns, "0.0.0.0", 15008) as remote:  # a mesh port: not captured
            proc = pod.spawn(client_code(pod.peer_ip, 15008))
            conn, _ = remote.accept()
            conn.close()
            assert reply(proc)["peer"] == [pod.peer_ip, 15008]
            proc.stdin.close()
    finally:
        programs.detach(pod.cgroup)


COUNTER = b"""
BPF_ARRAY(tt_count, u64, 1);
int tt_egress(struct __sk_buff *skb)
{
    int k = 0;
    u64 *v = tt_count.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 1;
}
"""


def test_other_programs_on_the_cgroup_keep_running(programs, pod):
    from bcc import BPF, BPFAttachType

    other = BPF(text=COUNTER)
    fn = other.load_func(b"tt_egress", BPF.CGROUP_SKB, attach_type=BPFAttachType.CGROUP_INET_EGRESS)
    fd = os.open(pod.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    count = other[b"tt_count"]
    try:
        BPF.attach_func(fn, fd, BPFAttachType.CGROUP_INET_EGRESS, 2)
        programs.attach(pod.cgroup, strict=True)
        try:
            with listener(pod.netns, "127.0.0.1", 15001) as cap:
                proc = pod.spawn(client_code("10.96.0.10", 80))
                conn, _ = cap.accept()  # ours ran: the connect was captured
                conn.close()
                reply(proc)
                proc.stdin.close()
            after_attach = count[count.Key(0)].value
            assert after_attach > 0  # theirs ran too
        finally:
            programs.detach(pod.cgroup)
        assert [a["name"] for a in bpftool_show(pod.cgroup)] == ["tt_egress"]
        with listener(pod.peer_netns, "0.0.0.0", 9093) as remote:
            proc = pod.spawn(client_code(pod.peer_ip, 9093))
            conn, _ = remote.accept()
            conn.close()
            reply(proc)
            proc.stdin.close()
        assert count[count.Key(0)].value > after_attach
    finally:
        try:
            BPF.detach_func(fn, fd, BPFAttachType.CGROUP_INET_EGRESS)
        finally:
            os.close(fd)
            other.cleanup()
    assert bpftool_show(pod.cgroup) == []


@pytest.mark.parametrize("field,readable", [
    ("ifindex", True), ("ingress_ifindex", True), ("protocol", True), ("len", True),
    ("tc_classid", False), ("wire_len", False),  # what cgroup_skb may not see
])
def test_which_sk_buff_fields_cgroup_skb_may_read(programs, field, readable):
    """The fields strict.c relies on pass this kernel's verifier for cgroup_skb."""
    from bcc import BPF, BPFAttachType

    probe = BPF(text=f"int probe(struct __sk_buff *skb) {{ return skb->{field} == 7 ? 0 : 1; }}".encode())
    try:
        if readable:
            probe.load_func(b"probe", BPF.CGROUP_SKB, attach_type=BPFAttachType.CGROUP_INET_INGRESS)
        else:
            with pytest.raises(Exception, match="Permission denied|Invalid argument"):
                probe.load_func(b"probe", BPF.CGROUP_SKB, attach_type=BPFAttachType.CGROUP_INET_INGRESS)
    finally:
        probe.cleanup()


HTTP_APP = """
import http.server, socket, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"healthy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.TCPServer):
    allow_reuse_address = True
    address_family = socket.AF_INET6
    def server_bind(self):  # dual-stack: one listener for both families
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
srv = S(("::", 8081), H)
print("ready", flush=True)
srv.serve_forever()
"""


def probe(netns: str, source: str, url: str) -> str | None:
    """An HTTP probe with curl from `source` in `netns`: the body, or None if it failed."""
    out = subprocess.run(["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "2", "--interface", source, url],
                         capture_output=True, text=True, timeout=30)
    return out.stdout if out.returncode == 0 else None


def test_strict_lets_the_nodes_probes_through_and_only_them(programs, pod):
    """The peer netns plays the node (its veth end is the node's address, as a kubelet's
    probe arrives over the pod's veth); a second address on it plays another pod."""
    other = pod.peer_ip.rsplit(".", 1)[0] + ".3"
    other6 = pod.peer_ip6.rsplit(":", 1)[0] + ":3"
    vb = subprocess.run(["ip", "-n", pod.peer_netns, "-o", "link", "show", "type", "veth"], capture_output=True,
                        text=True, check=True).stdout.split(":")[1].strip().split("@")[0]
    subprocess.run(["ip", "-n", pod.peer_netns, "addr", "add", f"{other}/24", "dev", vb], check=True)
    subprocess.run(["ip", "-n", pod.peer_netns, "addr", "add", f"{other6}/64", "dev", vb, "nodad"], check=True)
    server = pod.spawn(HTTP_APP)
    assert server.stdout.readline().strip() == "ready"
    url4, url6 = f"http://{pod.pod_ip}:8081/healthz", f"http://[{pod.pod_ip6}]:8081/healthz"
    assert probe(pod.peer_netns, other, url4) == "healthy"  # reachable before STRICT
    programs.set_node_addresses([pod.peer_ip, pod.peer_ip6])
    programs.attach(pod.cgroup, strict=True)
    try:
        assert probe(pod.peer_netns, pod.peer_ip, url4) == "healthy"
        assert probe(pod.peer_netns, pod.peer_ip6, url6) == "healthy"
        assert probe(pod.peer_netns, other, url4) is None
        assert probe(pod.peer_netns, other6, url6) is None
        programs.set_node_addresses([])  # not the node's any more: dropped like the rest
        assert probe(pod.peer_netns, pod.peer_ip, url4) is None
    finally:
        programs.detach(pod.cgroup)
        programs.set_node_addresses([])
