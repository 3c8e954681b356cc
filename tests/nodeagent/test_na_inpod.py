"""In-pod routing for callers' addresses, for real: the node agent's rules in a pod netns
(idempotent, removed again) and ztunnel's transparent socket to the app on top of them,
IPv4 and IPv6, with the fallback to the pod's own address when the rules are missing or
the caller's address does not belong to its identity."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess

import trio

from meshcore import inpod as contract
from meshcore import netns
from nodeagent import inpod
from ztunnel.outbound import open_tcp_in
from ztunnel.transparent import Delivery

CALLER = "spiffe://cluster.local/ns/default/sa/sleep"


class Workload:
    def __init__(self, name: str, address: str, sa: str):
        self.namespace, self.name, self.address = "default", name, address
        self.identity = f"spiffe://cluster.local/ns/default/sa/{sa}"


class State:
    def __init__(self, *workloads: Workload):
        self.by_ip = {w.address: w for w in workloads}

    def workload_by_address(self, ip: str):
        return self.by_ip.get(ip)


def ip_json(netns_name: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", netns_name, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def nft_tables(netns_name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns_name, "nft", "list", "tables"], capture_output=True,
                          text=True, check=True).stdout


async def app_sees(fd: int, host: str, delivery: Delivery, state, caller_ip: str, pod_ip: str) -> tuple[str, str]:
    """Connect to an app listening in the pod netns; return (what the app saw, what ztunnel says)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = netns.socket_in(fd, family)
    raw.bind((host, 0))
    raw.listen(4)
    listener = trio.socket.from_stdlib_socket(raw)
    with trio.fail_after(5):
        sock, said = delivery.socket_for(fd, state, CALLER, caller_ip, pod_ip)
        app = await open_tcp_in(fd, (pod_ip, raw.getsockname()[1]), 3, sock)
        conn, peer = await listener.accept()
        # bytes both ways: the app's reply must come back to ztunnel's socket, not leave via eth0
        await conn.send(b"hi")
        await trio.lowlevel.wait_readable(app)
        assert app.recv(10) == b"hi"
    conn.close()
    app.close()
    listener.close()
    return peer[0], said


async def test_rules_are_idempotent_and_carry_replies_back_to_the_transparent_socket(pod, caplog):
    caplog.set_level(logging.INFO, "trellis.ztunnel.inbound")
    fd = netns.open_netns(pod.netns)
    state = State(Workload("sleep", pod.peer_ip, "sleep"), Workload("sleep", pod.peer_ip6, "sleep"))
    try:
        # without the rules: the pod's own address, and one line saying why
        delivery = Delivery("default/web")
        assert await app_sees(fd, "0.0.0.0", delivery, state, pod.peer_ip, pod.pod_ip) == (pod.pod_ip, pod.pod_ip)
        assert await app_sees(fd, "0.0.0.0", delivery, state, pod.peer_ip, pod.pod_ip) == (pod.pod_ip, pod.pod_ip)
        said = [r.getMessage() for r in caplog.records if "no route back" in r.getMessage()]
        assert len(said) == 1 and "default/web" in said[0], said

        await inpod.install(pod.netns)
        await inpod.install(pod.netns)   # again: a restarted node agent re-enrolls
        for family in ("-4", "-6"):
            rules = ip_json(pod.netns, family, "rule", "list", "pref", str(contract.RULE_PREF))
            assert len(rules) == 1 and rules[0]["fwmark"] == "0x111" and rules[0]["table"] == "100", rules
            assert [r["type"] for r in ip_json(pod.netns, family, "route", "show", "table", "100")] == ["local"]
        assert nft_tables(pod.netns).count(contract.NFT_TABLE) == 1

        # with them: the caller's address, both families
        delivery = Delivery("default/web")
        assert await app_sees(fd, "0.0.0.0", delivery, state, pod.peer_ip, pod.pod_ip) == (pod.peer_ip, pod.peer_ip)
        assert await app_sees(fd, "::", delivery, state, pod.peer_ip6, pod.pod_ip6) == (pod.peer_ip6, pod.peer_ip6)

        # a caller whose certificate does not match the workload at its address: not believed
        liar = State(Workload("db", pod.peer_ip, "db"))
        assert await app_sees(fd, "0.0.0.0", delivery, liar, pod.peer_ip, pod.pod_ip) == (pod.pod_ip, pod.pod_ip)
        assert any("belongs to default/db" in r.getMessage() for r in caplog.records)

        await inpod.remove(pod.netns)
        for family in ("-4", "-6"):
            assert ip_json(pod.netns, family, "rule", "list", "pref", str(contract.RULE_PREF)) == []
            assert ip_json(pod.netns, family, "route", "show", "table", "100") == []
        assert contract.NFT_TABLE not in nft_tables(pod.netns)
        assert await app_sees(fd, "0.0.0.0", Delivery("x/y"), state, pod.peer_ip, pod.pod_ip) == (pod.pod_ip, pod.pod_ip)
        await inpod.remove(pod.netns)   # nothing left to remove is not an error
    finally:
        os.close(fd)


async def test_a_missing_netns_is_reported_not_raised(caplog):
    assert await inpod.try_install("default/gone", "tt-na-no-such-netns") is False
    assert any("default/gone" in r.getMessage() and "in-pod routing" in r.getMessage() for r in caplog.records)
