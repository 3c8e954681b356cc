"""The node agent's side of the ZDS-like handoff to ztunnel (meshcore.wire.zds).

SOCK_SEQPACKET at <run-dir>/ztunnel.sock: one message per packet, fds as SCM_RIGHTS, one
reply per request. The client remembers every pod it has handed over, so when ztunnel
restarts (or starts after us) a reconnect replays hello + every add + snapshotSent:
ztunnel's view is always rebuilt from ours, and pods removed meanwhile are dropped.

It also holds each pod's listening sockets (meshcore.podsockets), made here inside the
pod's netns and handed to every ztunnel in the pod's `add`: while no ztunnel runs the
kernel queues connections on them, and the next ztunnel accepts them.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import trio

from meshcore import podsockets
from meshcore.netns import NetnsError, open_netns
from meshcore.wire import WireError, zds
from .reconcile import Pod

log = logging.getLogger("trellis.nodeagent.handoff")

REPLY_TIMEOUT = 5.0


class HandoffError(RuntimeError):
    pass


def add_message(pod: Pod, listeners: list[socket.socket]) -> zds.AddPod:
    return zds.AddPod(namespace=pod.namespace, name=pod.name, address=pod.address,
                      service_account=pod.service_account,
                      listeners=tuple(podsockets.address_of(s) for s in listeners))


def _describe(msg) -> str:
    return f"{msg.OP} {getattr(msg, 'uid', getattr(msg, 'node', ''))}".strip()


def check_reply(data: bytes, nfds: int, msg) -> zds.Reply:
    """The reply, or HandoffError unless it says ok."""
    what = _describe(msg)
    if not data:
        raise ConnectionResetError(f"ztunnel closed the handoff socket during {what}")
    try:
        reply = zds.decode_reply(data, nfds)
    except WireError as exc:
        raise HandoffError(f"ztunnel answered {what} with a bad reply: {exc}") from None
    if not reply.ok:
        raise HandoffError(f"ztunnel refused {what}: {reply.error}")
    return reply


class PodSockets:
    """The listening sockets held for one pod, with the netns they were made in."""

    def __init__(self, netns_id: tuple[int, int], socks: list[socket.socket]) -> None:
        self.netns_id, self.socks = netns_id, socks

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


class HandoffClient:
    def __init__(self, path: Path, node: str, map_fd: int):
        self.path, self.node, self.map_fd = Path(path), node, map_fd
        self.pods: dict[str, Pod] = {}
        self.sockets: dict[str, PodSockets] = {}
        # Set once the agent has handed over every pod of its first full view: only then
        # may ztunnel drop pods we did not mention (snapshotSent).
        self.synced = False
        # A plain non-blocking socket driven by trio's wait_readable/writable: trio's own
        # socket wrapper would turn the MSG_DONTWAIT liveness probe into a wait.
        self._sock: socket.socket | None = None
        self._lock = trio.Lock()
        self._last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def _request(self, msg, fds: list[int] = ()) -> tuple[zds.Reply, list[int]]:
        sock = self._sock
        assert sock is not None
        anc = zds.ancillary(fds)
        try:
            data = zds.encode(msg)
        except WireError as exc:
            raise HandoffError(str(exc)) from None
        with trio.fail_after(REPLY_TIMEOUT):
            while True:
                try:
                    sock.sendmsg([data], anc)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    answer, ranc, _flags, _ = sock.recvmsg(zds.MAX_MESSAGE, socket.CMSG_SPACE(zds.MAX_FDS * 4))
                    break
                except BlockingIOError:
                    continue
        rfds = zds.fds_from(ranc)
        try:
            return check_reply(answer, len(rfds), msg), rfds
        except BaseException:
            for fd in rfds:
                os.close(fd)
            raise

    def _listeners_for(self, pod: Pod, netns_fd: int) -> PodSockets:
        """This pod's sockets, made now if we hold none for its current netns."""
        netns_id = podsockets.netns_identity(netns_fd)
        held = self.sockets.get(pod.uid)
        if held is not None and held.netns_id != netns_id:
            held.close()  # the pod was recreated: those serve a netns that is gone
            held = None
        if held is None or not held.socks:
            try:
                socks = podsockets.bind_all(netns_fd)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise HandoffError(f"cannot make pod {pod.uid}'s listeners: {exc}") from None
                # A running ztunnel holds them (we restarted): the add's reply hands them back.
                socks = []
            held = self.sockets[pod.uid] = PodSockets(netns_id, socks)
        return held

    async def _send_add(self, pod: Pod) -> None:
        try:
            fd = open_netns(pod.netns)
        except NetnsError as e:
            raise HandoffError(f"cannot hand pod {pod.uid} to ztunnel: {e}") from None
        try:
            held = self._listeners_for(pod, fd)
            reply, rfds = await self._request(add_message(pod, held.socks),
                                              [fd, *(s.fileno() for s in held.socks)])
            if rfds:
                try:
                    socks = podsockets.adopt(rfds, reply.listeners, fd)
                except (OSError, ValueError) as exc:
                    log.warning("pod %s: ztunnel handed back unusable listeners: %s", pod.uid, exc)
                else:
                    held.close()
                    held.socks = socks
                    log.info("pod %s: holding the %d listener(s) ztunnel was serving", pod.uid, len(socks))
        finally:
            os.close(fd)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            try:
                sock.connect(str(self.path))
            except BlockingIOError:  # listener backlog full: wait for room
                with trio.fail_after(REPLY_TIMEOUT):
                    await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
        except (OSError, trio.TooSlowError) as e:
            sock.close()
            reason = getattr(e, "strerror", None) or "timed out"
            raise HandoffError(f"ztunnel is not listening on {self.path} ({reason}); "
                               f"is ztunnel running for node {self.node} with the same --run-dir? "
                               f"{len(self.pods)} pod(s) will be handed over when it is") from None
        self._sock = sock
        try:
            await self._request(zds.Hello(node=self.node), [self.map_fd])
            for pod in list(self.pods.values()):
                try:
                    await self._send_add(pod)
                except HandoffError as e:
                    log.warning("replaying pod %s to ztunnel failed: %s", pod.uid, e)
            if self.synced:
                await self._request(zds.SnapshotSent())
        except (OSError, trio.TooSlowError, HandoffError) as e:
            self._drop()
            raise HandoffError(f"ztunnel at {self.path} failed during hello/replay: {e or 'timed out'}") from None
        log.info("connected to ztunnel at %s, handed over %d pod(s)", self.path, len(self.pods))

    def peer_gone(self) -> bool:
        """True when connected and ztunnel has closed its side (exited or draining)."""
        if self._sock is None:
            return False
        try:
            return self._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def ensure_connected(self) -> bool:
        """(Re)connect and replay if ztunnel went away or was never reached; True if up."""
        async with self._lock:
            if self.peer_gone():
                log.warning("ztunnel closed the handoff socket %s (restarted?); reconnecting", self.path)
                self._drop()
            if self._sock is None:
                try:
                    await self._connect()
                    self._last_error = None
                except HandoffError as e:
                    if str(e) != self._last_error:  # polled often: say it once per change
                        log.warning("%s", e)
                    self._last_error = str(e)
            return self._sock is not None

    async def _call(self, op, replayed_on_connect: bool) -> None:
        """Run one request; on a dead socket reconnect once (the reconnect replays adds)."""
        async with self._lock:
            for _ in range(2):
                if self._sock is None:
                    try:
                        await self._connect()
                    except HandoffError as e:
                        log.warning("%s", e)
                        return  # recorded; replayed on the next successful connect
                    if replayed_on_connect:
                        return
                try:
                    await op()
                    return
                except (OSError, trio.TooSlowError) as e:
                    log.warning("handoff socket %s failed (%s); reconnecting", self.path, e or "timed out")
                    self._drop()

    async def add(self, pod: Pod) -> None:
        """Hand a pod to ztunnel; raises HandoffError if its netns is gone or ztunnel refuses it."""
        try:
            fd = open_netns(pod.netns)
        except NetnsError as e:
            raise HandoffError(f"cannot hand pod {pod.uid} to ztunnel: {e}") from None
        try:
            self._listeners_for(pod, fd)  # held from now on, whether or not ztunnel runs
        finally:
            os.close(fd)
        self.pods[pod.uid] = pod
        try:
            await self._call(lambda: self._send_add(pod), replayed_on_connect=True)
        except HandoffError:
            self._forget(pod.uid)  # refused: not ours to replay later
            raise

    def _forget(self, uid: str) -> None:
        self.pods.pop(uid, None)
        held = self.sockets.pop(uid, None)
        if held is not None:
            held.close()

    async def remove(self, uid: str) -> None:
        self._forget(uid)
        await self._call(lambda: self._request(zds.RemovePod(uid=uid)), replayed_on_connect=False)

    async def snapshot_sent(self) -> None:
        """Every pod of the agent's first full view is handed over: from now on each
        (re)connect ends with snapshotSent, and this one tells the current ztunnel."""
        if self.synced:
            return
        self.synced = True
        await self._call(lambda: self._request(zds.SnapshotSent()), replayed_on_connect=True)

    async def aclose(self) -> None:
        async with self._lock:
            self._drop()
            for uid in list(self.sockets):
                self.sockets.pop(uid).close()

