"""One ztunnel worker process: serves its share of every pod's connections.

Started by the owner (ztunnel/fleet.py) as `python -m ztunnel.worker --fd N ...` with one
end of a SEQPACKET socketpair; everything it serves arrives on it (meshcore.wire.workers):
the config snapshot, the pods' certificates (the owner signs and renews them once for
the node), the origdst map and, per pod, the netns and this worker's listening sockets.
The per-pod proxies are ztunnel's own (PodManager, Outbound, Inbound): a worker is the
data-plane half of a single-process ztunnel, without a front door or a signer.

It drains (stops accepting, lets open connections finish until --drain-timeout) on
SIGTERM and when the owner goes away: the kernel closes the owner's end of the socketpair
however the owner exits (SIGKILL included), so an owner crash never leaves a worker behind.
(Not PR_SET_PDEATHSIG: it fires when the *thread* that forked exits, and trio forks from a
thread of its cache, which ends after 10 s idle.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

import trio

from meshcore import identity as ident
from meshcore import malloc
from meshcore.certs import CertificateManager
from meshcore.resources import ResourceInvalid, from_dict
from meshcore.state import State
from meshcore.wire import WireError, workers as wire
from meshcore.wire.packets import ancillary, fds_from

from . import route
from .inputs import ProxyInputs
from .metrics import Metrics
from .podinfo import PodInfo
from .pods import PodManager

log = logging.getLogger("trellis.ztunnel.worker")


class OutOfStep(Exception):
    """A config change this worker cannot apply to what it holds: it exits to be replaced."""


class Worker:
    def __init__(self, sock: trio.socket.SocketType, *, index: int, trust_domain: str,
                 drain_timeout: float) -> None:
        self.sock, self.index, self.trust_domain, self.drain_timeout = sock, index, trust_domain, drain_timeout
        self.state = State(trust_domain=trust_domain)
        self.seq = -1
        self.resources: dict[tuple, Any] = {}   # the owner's, as of snapshot `seq`
        self.metrics = Metrics()
        self.certs = CertificateManager(None, trust_domain)  # never run: fed by put()
        self.origdst_fd: int | None = None
        self._configured = trio.Event()
        self.inputs = ProxyInputs(state=lambda: self.state, certs=self.certs, metrics=self.metrics,
                                  origdst_fd=lambda: self.origdst_fd, trust_domain=trust_domain,
                                  pick=route.RoundRobin(), drain_timeout=drain_timeout,
                                  configured=self._configured.wait)
        self.pods: PodManager | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.pods = PodManager(self.inputs, nursery)
            nursery.start_soon(self._on_signals, nursery.cancel_scope)
            log.info("%s: draining", await self._serve())
            await self.drain(nursery.cancel_scope)

    async def drain(self, scope: trio.CancelScope) -> None:
        await self.pods.drain_all(self.drain_timeout)
        scope.cancel()

    async def _on_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                log.info("draining %d pod(s) for up to %.0fs", len(self.pods.pods), self.drain_timeout)
                await self.drain(scope)
                return

    async def _serve(self) -> str:
        """Act on the owner's messages until it goes away (or this worker cannot follow it:
        it drains and exits, and the owner starts another); why it stopped."""
        while True:
            try:
                data, anc, _flags, _ = await self.sock.recvmsg(wire.CODEC.max_message, wire.CODEC.ancdata_space())
            except OSError as exc:
                log.warning("owner connection failed: %s", exc)
                return "owner gone"
            fds = fds_from(anc)
            if not data and not fds:
                return "owner gone"
            try:
                await self.handle(data, fds)
            except (WireError, ValueError, OSError) as exc:
                log.error("bad message from the owner: %s", exc)
            except OutOfStep as exc:
                log.error("cannot follow the owner's config any more: %s", exc)
                return "out of step with the owner"

    async def handle(self, data: bytes, fds: list[int]) -> None:
        """Act on one message; every fd is kept by its new owner or closed."""
        owned = list(fds)
        try:
            msg = wire.decode(data, len(fds))
            if isinstance(msg, wire.OrigDst):
                old, self.origdst_fd = self.origdst_fd, owned.pop(0)
                if old is not None:
                    os.close(old)
            elif isinstance(msg, wire.Snapshot):
                self._snapshot(msg, wire.read_body(owned[0]))
            elif isinstance(msg, wire.Certificate):
                bundle = ident.CertBundle(msg.key_pem.encode(), tuple(c.encode() for c in msg.chain),
                                          tuple(r.encode() for r in msg.roots))
                self.certs.put(msg.identity, bundle, dt.datetime.fromisoformat(msg.received))
            elif isinstance(msg, wire.zds.AddPod):
                netns_fd, listener_fds = owned[0], owned[1:]
                owned.clear()
                try:
                    info = PodInfo.from_message(msg, netns_fd, listener_fds, self.trust_domain)
                except ValueError:
                    os.close(netns_fd)
                    raise
                await self.pods.add(info)
            elif isinstance(msg, wire.zds.RemovePod):
                await self.pods.remove(msg.uid)
            elif isinstance(msg, wire.Scrape):
                await self._stats(msg.seq)
            elif isinstance(msg, wire.Ping):
                await self.sock.send(wire.encode(wire.Pong(seq=msg.seq)))
        finally:
            for fd in owned:
                os.close(fd)

    def _snapshot(self, msg: wire.Snapshot, body: bytes) -> None:
        if msg.seq <= self.seq:
            return  # an older one overtaken by a newer
        try:
            resources = self._resources_of(msg, json.loads(body))
        except (ValueError, ResourceInvalid, KeyError, TypeError) as exc:
            # The owner sent what it applied itself, so this is a bug or a mixed install: a
            # successor gets every resource from the owner (Fleet replays them), this one cannot.
            raise OutOfStep(f"snapshot {msg.seq} (a change to {msg.base}) from the owner: {exc}") from exc
        self.resources, self.seq = resources, msg.seq   # as the owner holds them, applied or not
        try:
            new = State.from_resources(resources.values(), trust_domain=self.trust_domain,
                                       version=None if msg.version < 0 else msg.version)
        except (ValueError, ResourceInvalid) as exc:
            log.error("cannot apply snapshot %d from the owner (%s); keeping version %s", msg.seq, exc,
                      self.state.version)
            return
        self.state = new
        if new.version is not None:
            self.metrics.config_version.set(new.version)
        self._configured.set()

    def _resources_of(self, msg: wire.Snapshot, data: Any) -> dict[tuple, Any]:
        if msg.base < 0:
            return {r.key: r for r in (from_dict(d, "<owner>") for d in data)}
        if msg.base != self.seq:
            raise ValueError(f"this worker holds snapshot {self.seq}")
        out = dict(self.resources)
        for k in data["deletes"]:
            out.pop(tuple(k), None)
        for d in data["upserts"]:
            r = from_dict(d, "<owner>")
            out[r.key] = r
        return out

    async def _stats(self, seq: int) -> None:
        body = json.dumps({"pid": os.getpid(), "worker": self.index, "version": self.state.version,
                           "metrics": self.metrics.render().decode(), "pods": self.pods.dump(),
                           "certs": self.certs.dump()}, default=str).encode()
        fd = wire.body_fd(body)
        try:
            await self.sock.sendmsg([wire.encode(wire.Stats(seq=seq))], ancillary([fd]))
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ztunnel.worker",
                                description="A ztunnel worker; started by `python -m ztunnel --workers N`.")
    p.add_argument("--fd", type=int, required=True, help="the owner's SEQPACKET socket")
    p.add_argument("--owner-pid", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    from meshcore.telemetry import configure_logging

    from .__main__ import raise_fd_limit, tune_gc
    configure_logging(args.log_level.upper(), f"%(asctime)s %(levelname)s worker-{args.index} %(name)s %(message)s")
    raise_fd_limit()
    malloc.tune()

    async def run() -> None:
        if os.getppid() != args.owner_pid:
            return  # the owner is already gone: it handed us nothing to serve
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=args.fd))
        with sock:
            await Worker(sock, index=args.index, trust_domain=args.trust_domain,
                         drain_timeout=args.drain_timeout).run()
    try:
        tune_gc()
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
