"""A throwaway "node": netns tt-zt-<id>-node with a bridge, and pod netns joined to it by veth.

Everything is created with the tt-zt- prefix and deleted in `close()`, even on failure."""
from __future__ import annotations

import os
import secrets
import subprocess

from meshcore import netns


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Lab:
    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.subnet = f"10.253.{secrets.randbelow(250) + 1}"
        self.node = f"tt-zt-{self.id}-node"
        self.created: list[str] = []
        self.fds: list[int] = []
        self._add(self.node)
        ip("-n", self.node, "link", "add", "br0", "type", "bridge")
        ip("-n", self.node, "addr", "add", f"{self.subnet}.254/24", "dev", "br0")
        ip("-n", self.node, "link", "set", "br0", "up")
        self.node_ip = f"{self.subnet}.254"

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def pod(self, short: str, host: int) -> tuple[str, str, int]:
        """A pod netns with eth0 at subnet.host; returns (name, ip, open fd)."""
        name = f"tt-zt-{self.id}-{short}"
        self._add(name)
        ip("-n", self.node, "link", "add", f"v-{short}", "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("-n", self.node, "link", "set", f"v-{short}", "master", "br0", "up")
        addr = f"{self.subnet}.{host}"
        ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        fd = netns.open_netns(name)
        self.fds.append(fd)
        return name, addr, fd

    def node_fd(self) -> int:
        fd = netns.open_netns(self.node)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
