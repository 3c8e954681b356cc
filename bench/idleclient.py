"""The idle-N scenarios' client: a script run in a lab pod that opens and holds N connections,
and the bench's side of it (its `ready` line, its end)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time


def script(n: int, host: str, port: int) -> str:
    """A client that opens n connections to host:port, proves the last one carries a request,
    says `ready` and holds them all until its stdin closes."""
    return ("import socket,sys,resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE,(resource.getrlimit(resource.RLIMIT_NOFILE)[1],)*2)\n"
            "socks=[]\n"
            f"for i in range({n}):\n"
            f"    socks.append(socket.create_connection(({host!r},{port}),timeout=10))\n"
            "s=socks[-1]; s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); assert b'200' in s.recv(1000)\n"
            "print('ready',flush=True); sys.stdin.read()\n")


def readline(proc: subprocess.Popen, deadline: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    return proc.stdout.readline().strip() if ready else ""


def end(proc: subprocess.Popen) -> None:
    """Close the idle client's stdin (it exits and drops its connections); kill its group if it hangs."""
    try:
        proc.stdin.close()
        proc.wait(timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
