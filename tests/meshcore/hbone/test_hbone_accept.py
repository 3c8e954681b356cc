"""The accept loop survives running out of file descriptors (EMFILE), as trio.serve_listeners does."""
from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys

import trio

from .conftest import echo, start_server
from .test_hbone_security import assert_still_serves

HOLDER = """
import socket, sys
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(20)]
print("ok", flush=True)
sys.stdin.read()
"""


async def test_emfile_logs_backs_off_and_recovers(nursery, caplog, client_bundle, server_bundle):
    caplog.set_level(logging.ERROR, "meshcore.hbone")
    (port,), stats = await start_server(nursery, echo, server_bundle)
    # The peers live in another process so that only the server's descriptors count.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert holder.stdout.readline().strip() == "ok"
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 2, hard))
        with trio.fail_after(10):
            while not any("EMFILE" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with trio.fail_after(10):
            while stats.connections_accepted < 20:
                await trio.sleep(0.02)   # the backlog drains once descriptors are back
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        holder.kill()
        holder.wait()
    assert any("raise the file descriptor limit" in r.getMessage() for r in caplog.records)
    await assert_still_serves(port, client_bundle)
