"""The node agent -> ztunnel handoff: JSON messages with fds over a SEQPACKET Unix socket.

One message per packet, fds as SCM_RIGHTS (docs/internals.md). Every request gets an
answer; a bad one gets `{"ok": false, "error": ...}` and the connection stays up.
"""
from __future__ import annotations

import array
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable

import trio

from .podinfo import PodInfo
from .pods import PodManager

log = logging.getLogger("trellis.ztunnel.zds")
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8


def _fds_from(ancdata) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return list(fds)


class ZdsServer:
    def __init__(self, pods: PodManager, trust_domain: str, on_hello: Callable[[int, str], None]) -> None:
        self.pods, self.trust_domain, self.on_hello = pods, trust_domain, on_hello
        self.connections = 0
        self.path: Path | None = None

    async def bind(self, path: str | Path) -> trio.socket.SocketType:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket from a previous run
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind the node agent socket {path}: {exc.strerror} "
                                     f"(is --run-dir writable?)") from None
        os.chmod(path, 0o600)
        sock.listen(16)
        self.path = path
        return sock

    async def serve(self, sock: trio.socket.SocketType, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                with sock:
                    while True:
                        conn, _ = await sock.accept()
                        nursery.start_soon(self._serve_conn, conn)
        finally:
            # A stale socket would make the node agent think we are still here.
            if self.path is not None:
                self.path.unlink(missing_ok=True)

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        self.connections += 1
        with conn:
            while True:
                try:
                    data, anc, _flags, _ = await conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
                except OSError as exc:
                    log.warning("node agent connection failed: %s", exc)
                    return
                fds = _fds_from(anc)
                if not data and not fds:
                    return  # the node agent closed the connection
                reply = await self.handle(data, fds)
                try:
                    await conn.send(json.dumps(reply).encode())
                except OSError as exc:
                    log.warning("cannot answer the node agent: %s", exc)
                    return

    async def handle(self, data: bytes, fds: list[int]) -> dict[str, Any]:
        """Act on one message; every fd received is either kept by its new owner or closed."""
        owned = list(fds)
        try:
            try:
                msg = json.loads(data)
                if not isinstance(msg, dict):
                    raise ValueError("message is not a JSON object")
            except ValueError as exc:
                return {"ok": False, "error": f"bad message from the node agent: {exc}"}
            op = msg.get("op")
            if op == "hello":
                if len(fds) != 1:
                    return {"ok": False, "error": f"hello needs exactly one fd (the origdst BPF map), got {len(fds)}"}
                self.on_hello(owned.pop(0), str(msg.get("node", "")))
                return {"ok": True}
            if op == "add":
                if len(fds) != 1:
                    return {"ok": False, "error": f"add for {msg.get('uid')} needs exactly one fd (the pod "
                                                  f"netns), got {len(fds)}"}
                try:
                    info = PodInfo.from_message(msg, owned[0], self.trust_domain)
                except ValueError as exc:
                    return {"ok": False, "error": str(exc)}
                owned.pop(0)  # PodManager.add owns (and on failure closes) it from here
                try:
                    await self.pods.add(info)
                except OSError as exc:
                    return {"ok": False, "error": f"cannot start pod {info.uid}: {exc}"}
                log.info("pod %s added (%s, %s)", info.uid, info.address, info.identity)
                return {"ok": True}
            if op == "remove":
                uid = msg.get("uid")
                if not uid:
                    return {"ok": False, "error": "remove needs a uid (\"<ns>/<name>\")"}
                known = await self.pods.remove(str(uid))
                log.info("pod %s removed%s", uid, "" if known else " (was not known: nothing to do)")
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r}; expected hello, add or remove"}
        finally:
            for fd in owned:
                os.close(fd)
