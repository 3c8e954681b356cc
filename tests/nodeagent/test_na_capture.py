"""connect4/connect6 + sockops on a real pod cgroup: what is captured, what is not."""
from __future__ import annotations

import json
import socket
import subprocess

import pytest

from meshcore.netns import netns_cookie
from na_helpers import bpftool_show, client_code, listener, pending_for, reply
from nodeagent.loader import leaf_address, origdst_entry


@pytest.fixture
def captured(programs, pod):
    programs.attach(pod.cgroup)
    try:
        yield pod
    finally:
        programs.detach(pod.cgroup)


def test_tcp_to_service_vip_is_redirected_and_original_destination_recorded(programs, captured):
    pod = captured
    lst = listener(pod.netns, "127.0.0.1", 15001)
    with lst:
        proc = pod.spawn(client_code("10.96.0.10", 80))
        conn, peer = lst.accept()
        with conn:
            seen = reply(proc)
            assert seen["peer"] == ["127.0.0.1", 15001]
            assert seen["local"][1] == peer[1]
            entry = origdst_entry(programs.origdst, netns_cookie(lst), peer[1])
            assert entry is not None, "sockops did not move the entry into origdst"
            assert leaf_address(entry) == ("10.96.0.10", 80)
            assert entry.family == socket.AF_INET
            assert pending_for(programs, 80) == 0  # moved, not copied
            del programs.origdst[programs.origdst.Key(netns_cookie(lst), peer[1])]
        proc.stdin.close()


def test_ipv6_destination_goes_to_ipv6_loopback(programs, captured):
    pod = captured
    lst = listener(pod.netns, "::1", 15001, socket.AF_INET6)
    with lst:
        proc = pod.spawn(client_code("fd00::10", 8080, "AF_INET6"))
        conn, peer = lst.accept()
        with conn:
            assert reply(proc)["peer"] == ["::1", 15001]
            entry = origdst_entry(programs.origdst, netns_cookie(lst), peer[1])
            assert entry is not None and entry.family == socket.AF_INET6
            assert leaf_address(entry) == ("fd00::10", 8080)
        proc.stdin.close()


def test_v4_mapped_destination_goes_to_v4_listener_as_ipv4(programs, captured):
    pod = captured
    lst = listener(pod.netns, "127.0.0.1", 15001)
    with lst:
        proc = pod.spawn(client_code("::ffff:10.96.0.11", 443, "AF_INET6"))
        conn, peer = lst.accept()
        with conn:
            assert reply(proc)["peer"] == ["::ffff:127.0.0.1", 15001]
            entry = origdst_entry(programs.origdst, netns_cookie(lst), peer[1])
            assert entry is not None and entry.family == socket.AF_INET
            assert leaf_address(entry) == ("10.96.0.11", 443)
        proc.stdin.close()


def assert_direct(pod, proc, lst: socket.socket, capture: socket.socket, host: str, port: int):
    conn, _ = lst.accept()
    conn.close()
    assert reply(proc)["peer"] == [host, port]
    capture.setblocking(False)
    with pytest.raises(BlockingIOError):
        capture.accept()
    proc.stdin.close()


def test_loopback_is_not_captured(captured):
    pod = captured
    with listener(pod.netns, "127.0.0.1", 15001) as cap, listener(pod.netns, "127.0.0.1", 8080) as app:
        proc = pod.spawn(client_code("127.0.0.1", 8080))
        assert_direct(pod, proc, app, cap, "127.0.0.1", 8080)


def test_ipv6_loopback_and_mesh_ports_are_not_captured(captured):
    pod = captured
    with listener(pod.netns, "::1", 15001, socket.AF_INET6) as cap, \
            listener(pod.netns, "::1", 8080, socket.AF_INET6) as app, \
            listener(pod.peer_netns, "::", 15008, socket.AF_INET6) as remote:
        proc = pod.spawn(client_code("::1", 8080, "AF_INET6"))
        assert_direct(pod, proc, app, cap, "::1", 8080)
        cap.setblocking(True)
        proc = pod.spawn(client_code(pod.peer_ip6, 15008, "AF_INET6"))
        assert_direct(pod, proc, remote, cap, pod.peer_ip6, 15008)


@pytest.mark.parametrize("port", [15008, 15020, 15021])
def test_mesh_ports_are_not_captured(captured, port):
    pod = captured
    with listener(pod.netns, "127.0.0.1", 15001) as cap, listener(pod.peer_netns, "0.0.0.0", port) as remote:
        proc = pod.spawn(client_code(pod.peer_ip, port))
        assert_direct(pod, proc, remote, cap, pod.peer_ip, port)


def test_excluded_port_is_not_captured_but_others_are(programs, captured):
    pod = captured
    programs.set_excluded_ports([9090])
    try:
        with listener(pod.netns, "127.0.0.1", 15001) as cap, listener(pod.peer_netns, "0.0.0.0", 9090) as remote:
            proc = pod.spawn(client_code(pod.peer_ip, 9090))
            assert_direct(pod, proc, remote, cap, pod.peer_ip, 9090)
            cap.setblocking(True)
            cap.settimeout(8)
            proc = pod.spawn(client_code(pod.peer_ip, 9091))
            conn, _ = cap.accept()
            conn.close()
            assert reply(proc)["peer"] == ["127.0.0.1", 15001]
            proc.stdin.close()
    finally:
        programs.set_excluded_ports([])


def test_udp_is_not_captured(programs, captured):
    pod = captured
    out = pod.run(client_code("10.96.0.10", 53, type="SOCK_DGRAM").replace("sys.stdin.read()", ""))
    assert json.loads(out)["peer"] == ["10.96.0.10", 53]
    assert pending_for(programs, 53) == 0


def test_same_netns_outside_pod_cgroup_is_not_captured(captured):
    pod = captured
    with listener(pod.netns, "127.0.0.1", 15001) as cap, listener(pod.peer_netns, "0.0.0.0", 9092) as remote:
        proc = pod.spawn(client_code(pod.peer_ip, 9092), cgroup=pod.other_cgroup)
        assert_direct(pod, proc, remote, cap, pod.peer_ip, 9092)


def test_detach_leaves_cgroup_empty(programs, pod):
    names = programs.attach(pod.cgroup, strict=True)
    shown = bpftool_show(pod.cgroup)
    assert sorted(a["name"] for a in shown) == sorted(names) and len(names) == 4
    assert {a["attach_flags"] for a in shown} == {"multi"}
    assert sorted(programs.detach(pod.cgroup)) == sorted(names)
    out = subprocess.run(["bpftool", "cgroup", "show", str(pod.cgroup)],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""
    assert programs.attachments(pod.cgroup) == []


def test_ztunnel_reads_what_sockops_wrote(programs, captured):
    """Contract check with ztunnel/origdst.py: same key/value layout, same cookie and port."""
    from ztunnel import origdst as zt_origdst

    pod = captured
    lst = listener(pod.netns, "127.0.0.1", 15001)
    with lst:
        proc = pod.spawn(client_code("10.96.3.4", 8443))
        conn, peer = lst.accept()
        with conn:
            reply(proc)
            assert zt_origdst.take(programs.origdst_fd, netns_cookie(lst), peer[1]) == ("10.96.3.4", 8443)
            assert zt_origdst.take(programs.origdst_fd, netns_cookie(lst), peer[1]) is None  # consumed
        proc.stdin.close()


def test_excluded_ports_are_validated(programs):
    from nodeagent.loader import LoaderError

    with pytest.raises(LoaderError, match="not a TCP port"):
        programs.set_excluded_ports([0])
    with pytest.raises(LoaderError, match="at most 64"):
        programs.set_excluded_ports(range(1000, 1100))
    programs.set_excluded_ports([])


CRASHING_AGENT = """
import os, sys
from nodeagent.loader import Programs
p = Programs()
p.attach(sys.argv[1], strict=True)
print("attached", flush=True)
sys.stdin.read()
"""


def test_programs_left_by_a_killed_agent_are_replaced(programs, pod):
    import signal
    import sys

    old = subprocess.Popen([sys.executable, "-c", CRASHING_AGENT, str(pod.cgroup)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pod.procs.append(old)
    assert old.stdout.readline().strip() == "attached"
    old.send_signal(signal.SIGKILL)  # no chance to detach
    old.communicate(timeout=10)
    stale = {a["id"] for a in bpftool_show(pod.cgroup)}
    assert len(stale) == 4  # attachments outlive their process
    programs.attach(pod.cgroup)
    try:
        now = bpftool_show(pod.cgroup)
        assert len(now) == 3 and not stale & {a["id"] for a in now}
        lst = listener(pod.netns, "127.0.0.1", 15001)
        with lst:
            proc = pod.spawn(client_code("10.96.0.12", 80))
            conn, peer = lst.accept()
            with conn:
                reply(proc)
                entry = origdst_entry(programs.origdst, netns_cookie(lst), peer[1])
                assert entry is not None and leaf_address(entry) == ("10.96.0.12", 80)  # in *our* map
            proc.stdin.close()
    finally:
        programs.detach(pod.cgroup)
    assert bpftool_show(pod.cgroup) == []
