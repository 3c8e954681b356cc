"""The node agent -> ztunnel handoff: ZDS messages (meshcore.wire.zds) over SEQPACKET.

One message per packet, fds as SCM_RIGHTS (docs/internals.md). Every request gets an
answer; a bad one gets `Reply(ok=False, error=...)` and the connection stays up. Each
connection is one node agent's session: after its `snapshotSent`, pods it did not add
on that connection were removed while it was away, and are dropped here.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable

import trio

from meshcore.wire import WireError, zds
from .podinfo import PodInfo
from .pods import PodManager

log = logging.getLogger("trellis.ztunnel.zds")


class Session:
    """One node agent connection: which pods it has (re)added since its hello."""

    def __init__(self) -> None:
        self.added: set[str] = set()


class ZdsServer:
    def __init__(self, pods: PodManager, trust_domain: str, on_hello: Callable[[int, str], None]) -> None:
        self.pods, self.trust_domain, self.on_hello = pods, trust_domain, on_hello
        self.connections = 0
        self.path: Path | None = None
        self._inode: int | None = None

    async def bind(self, path: str | Path) -> trio.socket.SocketType:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            # A stale socket from a previous run, or the socket of a ztunnel that is
            # draining: the node agent moves over to us once that one closes its side.
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind the node agent socket {path}: {exc.strerror} "
                                     f"(is --run-dir writable?)") from None
        os.chmod(path, 0o600)
        sock.listen(16)
        self.path, self._inode = path, path.stat().st_ino
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
            # A stale socket would make the node agent think we are still here; but a
            # successor that already bound the path keeps its own.
            try:
                if self.path is not None and self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass

    async def _serve_conn(self, conn: trio.socket.SocketType) -> None:
        self.connections += 1
        session = Session()
        with conn:
            while True:
                try:
                    data, anc, _flags, _ = await conn.recvmsg(zds.MAX_MESSAGE, socket.CMSG_SPACE(zds.MAX_FDS * 4))
                except OSError as exc:
                    log.warning("node agent connection failed: %s", exc)
                    return
                fds = zds.fds_from(anc)
                if not data and not fds:
                    return  # the node agent closed the connection
                reply, reply_fds = await self.handle(data, fds, session)
                try:
                    await conn.sendmsg([zds.encode(reply)], zds.ancillary(reply_fds))
                except OSError as exc:
                    log.warning("cannot answer the node agent: %s", exc)
                    return

    async def handle(self, data: bytes, fds: list[int], session: Session | None = None
                     ) -> tuple[zds.Reply, list[int]]:
        """Act on one message; every fd received is either kept by its new owner or closed.
        Returns the reply and the fds to send with it (ours: the kernel copies them)."""
        session = session if session is not None else Session()
        owned = list(fds)
        try:
            try:
                msg = zds.decode(data, len(fds))
            except WireError as exc:
                return zds.Reply(ok=False, error=f"bad message from the node agent: {exc}"), []
            if isinstance(msg, zds.Hello):
                session.added.clear()
                self.on_hello(owned.pop(0), msg.node)
            elif isinstance(msg, zds.AddPod):
                return await self._add(msg, owned, session)
            elif isinstance(msg, zds.RemovePod):
                known = await self.pods.remove(msg.uid)
                session.added.discard(msg.uid)
                log.info("pod %s removed%s", msg.uid, "" if known else " (was not known: nothing to do)")
            elif isinstance(msg, zds.SnapshotSent):
                gone = [uid for uid in list(self.pods.pods) if uid not in session.added]
                for uid in gone:
                    await self.pods.remove(uid)
                log.info("node agent snapshot complete: %d pod(s)%s", len(session.added),
                         f"; dropped {', '.join(gone)} (removed while it was away)" if gone else "")
            return zds.Reply(), []
        finally:
            for fd in owned:
                os.close(fd)

    async def _add(self, msg: zds.AddPod, owned: list[int], session: Session) -> tuple[zds.Reply, list[int]]:
        netns_fd, listener_fds = owned[0], owned[1:]
        owned.clear()  # PodInfo / PodManager own (and on failure close) them from here
        try:
            info = PodInfo.from_message(msg, netns_fd, listener_fds, self.trust_domain)
        except ValueError as exc:
            os.close(netns_fd)
            return zds.Reply(ok=False, error=str(exc)), []
        try:
            pod = await self.pods.add(info)
        except OSError as exc:
            return zds.Reply(ok=False, error=f"cannot start pod {info.uid}: {exc}"), []
        session.added.add(info.uid)
        log.info("pod %s added (%s, %s, %s)", info.uid, info.address, info.identity,
                 f"{len(msg.listeners)} listener(s) from the node agent" if msg.listeners else "own listeners")
        if msg.listeners:
            return zds.Reply(), []
        # The node agent holds no copy of this pod's sockets (it restarted while we kept
        # serving): hand ours back, so the next ztunnel finds them queued.
        held = pod.listener_fds()
        return zds.Reply(listeners=tuple(a for a, _ in held)), [fd for _, fd in held]
