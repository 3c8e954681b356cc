"""The node agent's side of the ZDS-like handoff to ztunnel (docs/internals.md).

SOCK_SEQPACKET at <run-dir>/ztunnel.sock: one JSON object per message, fds as
SCM_RIGHTS, one reply per request. The client remembers every pod it has handed over,
so when ztunnel restarts (or starts after us) a reconnect replays hello + every add:
ztunnel's view is always rebuilt from ours.
"""
from __future__ import annotations

import array
import json
import logging
import os
import socket
from pathlib import Path

import trio

from meshcore.netns import NetnsError, open_netns
from .reconcile import Pod

log = logging.getLogger("trellis.nodeagent.handoff")

REPLY_TIMEOUT = 5.0
MAX_MESSAGE = 64 * 1024


class HandoffError(RuntimeError):
    pass


def hello_message(node: str) -> dict:
    return {"op": "hello", "node": node}


def add_message(pod: Pod) -> dict:
    return {"op": "add", "uid": pod.uid, "namespace": pod.namespace, "name": pod.name,
            "address": pod.address, "serviceAccount": pod.service_account}


def remove_message(uid: str) -> dict:
    return {"op": "remove", "uid": uid}


def encode(msg: dict) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise HandoffError(f"ZDS message {msg.get('op')} is {len(data)} bytes, over {MAX_MESSAGE}")
    return data


def check_reply(data: bytes, msg: dict) -> None:
    """Raise HandoffError unless `data` is {"ok": true}."""
    what = f"{msg['op']} {msg.get('uid', msg.get('node', ''))}".strip()
    if not data:
        raise ConnectionResetError(f"ztunnel closed the handoff socket during {what}")
    try:
        reply = json.loads(data)
    except ValueError:
        raise HandoffError(f"ztunnel answered {what} with non-JSON {data[:80]!r}") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        err = reply.get("error") if isinstance(reply, dict) else reply
        raise HandoffError(f"ztunnel refused {what}: {err}")


class HandoffClient:
    def __init__(self, path: Path, node: str, map_fd: int):
        self.path, self.node, self.map_fd = Path(path), node, map_fd
        self.pods: dict[str, Pod] = {}
        # A plain non-blocking socket driven by trio's wait_readable/writable: trio's own
        # socket wrapper would turn the MSG_DONTWAIT liveness probe into a wait.
        self._sock: socket.socket | None = None
        self._lock = trio.Lock()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def _request(self, msg: dict, fds: list[int] = ()) -> None:
        sock = self._sock
        assert sock is not None
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        data = encode(msg)
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
                    answer = sock.recv(MAX_MESSAGE)
                    break
                except BlockingIOError:
                    continue
        check_reply(answer, msg)

    async def _send_add(self, pod: Pod) -> None:
        try:
            fd = open_netns(pod.netns)
        except NetnsError as e:
            raise HandoffError(f"cannot hand pod {pod.uid} to ztunnel: {e}") from None
        try:
            await self._request(add_message(pod), [fd])
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
            await self._request(hello_message(self.node), [self.map_fd])
            for pod in list(self.pods.values()):
                try:
                    await self._send_add(pod)
                except HandoffError as e:
                    log.warning("replaying pod %s to ztunnel failed: %s", pod.uid, e)
        except (OSError, trio.TooSlowError, HandoffError) as e:
            self._drop()
            raise HandoffError(f"ztunnel at {self.path} failed during hello/replay: {e or 'timed out'}") from None
        log.info("connected to ztunnel at %s, handed over %d pod(s)", self.path, len(self.pods))

    def _peer_gone(self) -> bool:
        try:
            return self._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def ensure_connected(self) -> bool:
        """(Re)connect and replay if ztunnel went away or was never reached; True if up."""
        async with self._lock:
            if self._sock is not None and self._peer_gone():
                log.warning("ztunnel closed the handoff socket %s (restarted?); reconnecting", self.path)
                self._drop()
            if self._sock is None:
                try:
                    await self._connect()
                except HandoffError as e:
                    log.warning("%s", e)
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
            os.close(open_netns(pod.netns))
        except NetnsError as e:
            raise HandoffError(f"cannot hand pod {pod.uid} to ztunnel: {e}") from None
        self.pods[pod.uid] = pod
        try:
            await self._call(lambda: self._send_add(pod), replayed_on_connect=True)
        except HandoffError:
            self.pods.pop(pod.uid, None)  # refused: not ours to replay later
            raise

    async def remove(self, uid: str) -> None:
        self.pods.pop(uid, None)
        await self._call(lambda: self._request(remove_message(uid)), replayed_on_connect=False)

    async def aclose(self) -> None:
        async with self._lock:
            self._drop()
