"""An HBONE server in a process of its own, for the flood tests (its RSS is measured alone).

Each tunnel dials the app (a TCP port given in the config) and relays to it, as ztunnel's
inbound does. Usage: `python flood_server.py CONFIG.json`; prints {"port": N} once
serving, then, for every line read on stdin, one JSON line of its counters and RSS.
"""
from __future__ import annotations

import json
import os
import socket
import sys

import trio

from meshcore import sockio
from meshcore.hbone.limits import Limits
from meshcore.hbone.server import InboundTunnel, ServerStats, serve_hbone
from meshcore.identity import CertBundle
from meshcore.tls import server_context


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def main(cfg_path: str) -> None:
    with open(cfg_path) as f:
        cfg = json.load(f)
    bundle = CertBundle(cfg["key"].encode(), (cfg["chain"].encode(),), (cfg["root"].encode(),))
    ctx = server_context(bundle, alpn=["h2"])
    app = ("127.0.0.1", cfg["app_port"])
    stats = ServerStats()

    async def handler(req: InboundTunnel) -> None:
        sock = await sockio.connect(socket.socket(), app, 5)
        try:
            stream = await req.accept()
            try:
                await stream.relay(sock)
            finally:
                await trio.aclose_forcefully(stream)
        finally:
            sockio.close(sock)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_hbone(
            listeners, lambda: ctx, handler, stats=stats, limits=Limits(**cfg.get("limits", {})),
            task_status=task_status))
        print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
        while await stdin.receive_some(100):
            counters = {k: v for k, v in vars(stats).items() if k != "on_event"}
            print(json.dumps({**counters, "rss_kib": rss_kib()}), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
