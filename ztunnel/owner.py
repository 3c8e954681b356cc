"""ztunnel on N cores: the node-level owner process (`python -m ztunnel --workers N`, N > 1).

The owner keeps what there is one of per node: the control-plane watch, the workload
certificates (signed and renewed once), the node agent's handoff (ZDS) and the admin,
metrics and readiness ports. It serves no connection itself: N worker processes
(ztunnel/worker.py, supervised by ztunnel/fleet.py) do, each on its own listening socket
per pod listener, all of one SO_REUSEPORT group, so the kernel spreads new connections over
the workers by their 4-tuple hash. Worker 0 accepts on the node agent's socket (the
group's first member, meshcore.podsockets.bind_one); the owner binds one sibling per other
worker and keeps them, so a worker that dies leaves its socket queueing for its successor.

/metrics sums the workers' counters (asked at each scrape), /pods merges their pod states;
/certs is the owner's (the certificates every worker uses).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import trio
from prometheus_client import Gauge, generate_latest

from meshcore import admin, podsockets
from meshcore.wire import workers as wire
from meshcore.wire.zds import AddPod, RemovePod

from .aggregate import CounterFamily, merge_pods
from .app import Ztunnel
from .fleet import Fleet, Slot, worker_cpus
from .podinfo import PodInfo
from .pods import already_served

log = logging.getLogger("trellis.ztunnel.owner")


class SharedPod:
    """A pod as the owner holds it: the netns, and per worker slot the sockets it accepts on."""

    def __init__(self, info: PodInfo, workers: int, cpus: list[int] | None = None) -> None:
        self.info = info
        primary = list(info.listeners) or podsockets.bind_all(info.netns_fd)
        self.owned: list = [] if info.listeners else list(primary)   # info.close() closes the others
        self.slots: list[list] = [primary]
        try:
            for _ in range(1, workers):
                siblings = [podsockets.bind_sibling(info.netns_fd, s) for s in primary]
                self.owned += siblings
                self.slots.append(siblings)
        except OSError as exc:
            # A node agent whose sockets are in no reuseport group: the other workers share
            # worker 0's sockets (one accept queue; the kernel wakes whichever waits).
            log.warning("pod %s: %s; the workers share one accept queue per listener", info.uid, exc)
            self.slots += [primary] * (workers - len(self.slots))
            cpus = None
        try:
            for socks, cpu in zip(self.slots, cpus or ()):
                for s in socks:
                    podsockets.steer_to_cpu(s, cpu)
        except OSError as exc:   # the hash still spreads them; the pinned workers only lose locality
            log.warning("pod %s: cannot steer connections by CPU: %s", info.uid, exc)
        if workers > 1 and not podsockets.migrate_on_close(info.netns_fd):
            log.warning("pod %s: cannot set net.ipv4.tcp_migrate_req in its netns: connections queued on a "
                        "worker's listener when ztunnel stops are reset, not moved", info.uid)

    @property
    def uid(self) -> str:
        return self.info.uid

    def message(self, slot: int) -> tuple[AddPod, tuple[int, ...]]:
        socks = self.slots[slot]
        msg = AddPod(namespace=self.info.namespace, name=self.info.name, address=self.info.address,
                     service_account=self.info.service_account,
                     listeners=tuple(podsockets.address_of(s) for s in socks))
        return msg, (self.info.netns_fd, *(s.fileno() for s in socks))

    def listener_fds(self) -> list[tuple[str, int]]:
        """The group's first members: what a restarted node agent takes back (ZDS reply)."""
        return [(podsockets.address_of(s), s.fileno()) for s in self.slots[0]]

    def release(self) -> None:
        """Shutting down: drop the owner's copies of the listeners now. Each worker closes its
        own as it starts draining, so each worker listener's last copy goes then and the kernel
        moves what is queued on it (tcp_migrate_req) to a successor's listener of the group,
        instead of holding it until the slowest worker has drained its open connections."""
        for s in self.owned:
            s.close()
        self.owned = []
        self.info.close()

    def close(self) -> None:
        self.release()
        os.close(self.info.netns_fd)

    def dump(self) -> dict[str, Any]:
        return dict(self.info.dump(), listeners=[podsockets.address_of(s) for s in self.slots[0]])


class SharedPods:
    """ZdsServer's view of the pods (same interface as PodManager), handed to the fleet."""

    def __init__(self, owner: "Owner") -> None:
        self.owner = owner
        self.pods: dict[str, SharedPod] = {}

    async def add(self, info: PodInfo) -> SharedPod:
        old = await already_served(self, info)
        if old is not None:
            return old
        try:
            pod = SharedPod(info, len(self.owner.fleet.slots), self.owner.fleet.cpus)
            self.owner.certs.want(info.identity)
        except BaseException:
            os.close(info.netns_fd)
            info.close()
            raise
        self.pods[info.uid] = pod
        for slot in self.owner.fleet.slots:
            self.owner.fleet.send(slot, *self._add_message(pod, slot))
        return pod

    @staticmethod
    def _add_message(pod: SharedPod, slot: Slot) -> tuple[AddPod, None, tuple[int, ...]]:
        msg, fds = pod.message(slot.index)
        return msg, None, fds

    async def remove(self, uid: str, drain_timeout: float | None = None) -> bool:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return False
        self.owner.fleet.broadcast(RemovePod(uid=uid))  # each worker drains its share
        self.owner.certs.release(pod.info.identity)
        pod.close()
        return True

    async def drain_all(self, timeout: float) -> None:
        for pod in self.pods.values():
            pod.release()
        await self.owner.fleet.stop(timeout)
        for pod in self.pods.values():
            pod.close()
        self.pods = {}

    def dump(self) -> list[dict[str, Any]]:
        return [p.dump() for p in sorted(self.pods.values(), key=lambda p: p.uid)]


class _NodeMetrics:
    """A collector: the owner's own series (control plane, workers), then the workers'
    counters summed; an owner family that workers also report is theirs."""

    def __init__(self, own, counters: dict[str, CounterFamily]) -> None:
        self.own, self.counters = own, counters

    def collect(self):
        for fam in self.own.collect():
            if fam.name not in self.counters:
                yield fam
        for fam in self.counters.values():
            yield fam.metric()


class Owner(Ztunnel):
    def __init__(self, config, control_plane, workers: int, log_level: str = "INFO", cpu_mode: str = "pin") -> None:
        """`cpu_mode` (with one worker per usable CPU; else always "off"): "pin" worker i to
        CPU i and give it the connections that arrive there, "steer" them so but let the
        workers run anywhere, "off" the kernel's hash spreads connections."""
        super().__init__(config, control_plane)
        args = ["--trust-domain", config.trust_domain, "--drain-timeout", str(config.drain_timeout),
                "--log-level", log_level]
        self.fleet = Fleet(workers, args, self._replay, worker_cpus(workers) if cpu_mode != "off" else None,
                           pin=cpu_mode == "pin")
        self._snapshot: wire.Snapshot | None = None     # the last sent; deltas follow from it
        self._resources: dict[tuple, Any] = {}          # what it holds
        self._certificates: dict[str, wire.Certificate] = {}
        self.certs.on_issued = self._on_issued
        r = self.metrics.registry
        self._workers_gauge = Gauge("trellis_ztunnel_workers", "Worker processes configured", registry=r)
        self._alive_gauge = Gauge("trellis_ztunnel_workers_alive", "Worker processes running", registry=r)
        self._restarts_gauge = Gauge("trellis_ztunnel_worker_restarts", "Workers replaced since start", registry=r)
        self._workers_gauge.set(workers)

    # ---- what workers are told -------------------------------------------------------
    def on_update(self, resources: Any, version: int | None) -> None:
        before = self.state
        super().on_update(resources, version)
        if self.state is before:
            return  # not applied: the workers keep the last good one too
        items = resources.values() if isinstance(resources, dict) else resources
        current = {r.key: r for r in items}
        old, base = self._resources, self._snapshot.seq if self._snapshot else -1
        self._resources = current
        self._snapshot = wire.Snapshot(seq=base + 1 if base >= 0 else 1, version=-1 if version is None else version)
        if base < 0:
            self.fleet.broadcast(self._snapshot, self._full_body())
            return
        # Only what changed: the control-plane client keeps unchanged resources as they were,
        # so a change to one of 10,000 workloads costs the owner and each worker one, not all
        # (encoding and parsing them all took 0.15 s here and 0.32 s per worker).
        upserts = [r.to_dict() for k, r in current.items() if (o := old.get(k)) is not r and o != r]
        deletes = [list(k) for k in old if k not in current]
        body = json.dumps({"upserts": upserts, "deletes": deletes}, separators=(",", ":")).encode()
        self.fleet.broadcast(dataclasses.replace(self._snapshot, base=base), body)

    def _full_body(self) -> bytes:
        return json.dumps([r.to_dict() for r in self._resources.values()], separators=(",", ":")).encode()

    def on_hello(self, fd: int, node: str) -> None:
        super().on_hello(fd, node)
        self.fleet.broadcast(wire.OrigDst(), fds=(fd,))

    def _on_issued(self, identity: str, bundle, received) -> None:
        msg = wire.Certificate(identity=identity, key_pem=bundle.key_pem.decode(),
                               chain=tuple(c.decode() for c in bundle.chain_pem),
                               roots=tuple(r.decode() for r in bundle.roots_pem), received=received.isoformat())
        self._certificates[identity] = msg
        self.fleet.broadcast(msg)

    def _replay(self, slot: Slot) -> None:
        """Everything a new worker needs, in order, before anything newer."""
        if self.origdst_fd is not None:
            self.fleet.send(slot, wire.OrigDst(), fds=(self.origdst_fd,))
        if self._snapshot is not None:
            self.fleet.send(slot, self._snapshot, self._full_body())
        pods = self.pods.pods.values() if self.pods else ()
        used = {p.info.identity for p in pods}
        for identity, msg in list(self._certificates.items()):
            if identity in used:
                self.fleet.send(slot, msg)
            else:
                del self._certificates[identity]  # released since
        for pod in pods:
            self.fleet.send(slot, *SharedPods._add_message(pod, slot))

    # ---- app hooks -------------------------------------------------------------------
    def _pod_manager(self, nursery: trio.Nursery) -> SharedPods:
        return SharedPods(self)

    async def _start_workers(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.fleet.run)
        log.info("%d worker processes: %s", len(self.fleet.slots), ", ".join(str(s.pid) for s in self.fleet.slots))

    # ---- the node as a whole ---------------------------------------------------------
    async def _metrics(self, _req) -> admin.Response:
        counters, _reports = await self.fleet.counters()
        self._alive_gauge.set(self.fleet.alive)
        self._restarts_gauge.set(sum(s.restarts for s in self.fleet.slots))
        body = generate_latest(_NodeMetrics(self.metrics.registry, counters))
        return admin.Response(body, content_type="text/plain; version=0.0.4")

    async def node_pods(self) -> list[dict[str, Any]]:
        reports = await self.fleet.scrape()
        owned = self.pods.dump() if self.pods else []
        return merge_pods(owned, {i: r.get("pods", []) for i, r in reports.items()}, len(self.fleet.slots))

    def healthz(self) -> dict[str, Any]:
        return dict(super().healthz(), workers=self.fleet.dump())

    def routes(self) -> dict[str, admin.Handler]:
        routes = super().routes()

        async def pods(_req):
            return admin.Response(await self.node_pods())

        async def config_dump(_req):
            reports = await self.fleet.scrape()
            return admin.Response({"state": self.state.dump(), "certs": self.certs.dump(),
                                   "pods": await self.node_pods(), "health": self.healthz(),
                                   "workers": [dict(s.dump(), certs=reports.get(s.index, {}).get("certs"),
                                                    version=reports.get(s.index, {}).get("version"))
                                               for s in self.fleet.slots]})
        routes.update({"/pods": pods, "/config_dump": config_dump})
        return routes

    async def _ready(self, req) -> admin.Response:
        if not self.draining and self.state.version is not None and self.fleet.alive == 0:
            return admin.Response({"ready": False, "why": "no worker process is running"}, 503)
        return await super()._ready(req)
