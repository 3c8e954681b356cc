"""Helpers for the eBPF tests: clients run inside the pod, listeners inside a netns."""
from __future__ import annotations

import json
import os
import socket
import subprocess

from meshcore.netns import open_netns, socket_in


def client_code(host: str, port: int, family: str = "AF_INET", type: str = "SOCK_STREAM") -> str:
    return f"""
import json, socket, sys
s = socket.socket(socket.{family}, socket.{type})
s.settimeout(5)
s.connect(({host!r}, {port}))
print(json.dumps({{"local": s.getsockname()[:2], "peer": s.getpeername()[:2]}}), flush=True)
sys.stdin.read()
"""


def listener(netns: str, host: str, port: int, family=socket.AF_INET) -> socket.socket:
    fd = open_netns(netns)
    try:
        s = socket_in(fd, family, socket.SOCK_STREAM)
    finally:
        os.close(fd)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    s.settimeout(8)
    return s


def reply(proc) -> dict:
    line = proc.stdout.readline()
    assert line, f"client printed nothing: {proc.stderr.read() if proc.poll() is not None else ''}"
    return json.loads(line)


def bpftool_show(cgroup) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip() or "[]")


def pending_for(programs, port: int) -> int:
    return sum(1 for v in programs.bpf[b"cookie_origdst"].values() if v.port == port)
