"""The owner's workers: start N `python -m ztunnel.worker` processes, keep each told what
the node has (meshcore.wire.workers), replace one that dies, stop them all on shutdown.

Each worker slot has one socketpair and an ordered outbox (a memory channel): state
changes are queued synchronously in the order they happen, and one sender task per slot
writes them, so a worker sees an add before the remove that follows it. A new (or
replacement) worker's outbox starts with a replay of everything current: the origdst map,
the latest snapshot, every certificate and every pod with that slot's listening sockets,
which the owner kept open while the worker was down (so its share of new connections
waited in the kernel's queue instead of being refused). Other workers are not touched.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from meshcore.wire import WireError, workers as wire
from meshcore.wire.packets import ancillary, fds_from

from .aggregate import CounterFamily, parse_counters, sum_counters

log = logging.getLogger("trellis.ztunnel.fleet")


def worker_cpus(count: int) -> list[int] | None:
    """The CPU of each worker when there is one worker per CPU this process may use (its
    affinity), else None: the kernel's hash spreads connections and the scheduler places
    the workers. Pinned, worker i serves the connections whose packets CPU i handles
    (SO_INCOMING_CPU on its listeners): a request's wakeups stay on one CPU, both HBONE
    ends of a pair included (over a veth the receiver handles a packet on the sender's CPU)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        kernel = tuple(int(x) for x in os.uname().release.split(".")[:2])
    except (AttributeError, OSError, ValueError):
        return None
    if kernel < (6, 2):   # a reuseport group ignores SO_INCOMING_CPU before 6.2
        return None
    return allowed if count > 1 and len(allowed) == count else None


# Replacement backoff: the first at once, then 0.5 s doubling to 10 s; reset after 60 s up.
MIN_BACKOFF, MAX_BACKOFF, STABLE_AFTER = 0.5, 10.0, 60.0
# Liveness: a Ping every second; a worker whose Pong is HEARTBEAT_TIMEOUT late (stopped,
# deadlocked, spinning) is killed and replaced. Starting, or applying a snapshot (10,000
# workloads take seconds of CPU in one go), it has up to BUSY_GRACE; never more.
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, BUSY_GRACE = 1.0, 5.0, 30.0


@dataclass
class Slot:
    index: int
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    started: float = 0.0
    outbox: trio.MemorySendChannel | None = None   # None while no worker runs
    report: dict[str, Any] | None = None           # the last Stats of the running worker
    pending: dict[int, trio.Event] = field(default_factory=dict)
    process: Any = None
    last_pong: float = 0.0                         # monotonic time of the last Pong (or start)
    busy_until: float = 0.0                        # no heartbeat verdict before this...
    busy_seq: int = 0                              # ...unless a Ping sent after this one is answered
    pinged: int = 0                                # the last Ping sent
    hung: str | None = None                        # why the heartbeat killed it

    def heartbeat(self, now: float) -> str:
        if self.outbox is None:
            return "-"
        if now < self.busy_until:
            return "starting" if self.busy_seq == 0 else "applying config"
        late = now - self.last_pong
        return f"late {late:.1f}s" if late > 2 * HEARTBEAT_INTERVAL else "ok"

    def dump(self) -> dict[str, Any]:
        return {"worker": self.index, "pid": self.pid, "alive": self.outbox is not None,
                "restarts": self.restarts, "lastExit": self.last_exit, "heartbeat": self.heartbeat(time.monotonic())}


class Fleet:
    def __init__(self, count: int, worker_args: list[str], replay: Callable[["Slot"], None],
                 cpus: list[int] | None = None, pin: bool = True) -> None:
        """`worker_args`: flags every worker gets; `replay(slot)` queues what a new worker needs;
        `cpus[i]`: the CPU whose connections worker i takes (None: the kernel's hash spreads
        them), and with `pin` the one CPU it runs on."""
        self.slots = [Slot(i) for i in range(count)]
        self.cpus, self.pin = cpus, pin
        self.worker_args, self.replay = worker_args, replay
        self.retired: dict[str, CounterFamily] = {}
        self.stopping = False
        self._seq = itertools.count(1)

    @property
    def alive(self) -> int:
        return sum(1 for s in self.slots if s.outbox is not None)

    # ---- telling workers -------------------------------------------------------------
    def send(self, slot: Slot, msg, body: bytes | None = None, fds: tuple[int, ...] = ()) -> None:
        """Queue `msg` for one worker; `fds` are duplicated now (the caller keeps its own)."""
        if slot.outbox is None:
            return
        slot.outbox.send_nowait((msg, body, [os.dup(fd) for fd in fds]))

    def broadcast(self, msg, body: bytes | None = None, fds: tuple[int, ...] = ()) -> None:
        for slot in self.slots:
            self.send(slot, msg, body, fds)

    async def _sender(self, slot: Slot, recv: trio.MemoryReceiveChannel, sock) -> None:
        async for msg, body, fds in recv:
            try:
                if body is not None:
                    fds.append(wire.body_fd(body))
                await sock.sendmsg([wire.encode(msg)], ancillary(fds))
                if isinstance(msg, wire.Ping):
                    slot.pinged = msg.seq
                elif isinstance(msg, wire.Snapshot):   # busy until it answers the next Ping
                    slot.busy_until, slot.busy_seq = time.monotonic() + BUSY_GRACE, slot.pinged
            except (OSError, WireError) as exc:
                log.warning("cannot tell a worker %s: %s", getattr(msg, "OP", msg), exc)
            finally:
                for fd in fds:
                    os.close(fd)

    async def _reader(self, slot: Slot, sock) -> None:
        while True:
            try:
                data, anc, _flags, _ = await sock.recvmsg(wire.CODEC.max_message, wire.CODEC.ancdata_space())
            except OSError:
                return
            fds = fds_from(anc)
            if not data and not fds:
                return
            try:
                msg = wire.decode(data, len(fds))
                if isinstance(msg, wire.Pong):
                    slot.last_pong = time.monotonic()
                    if msg.seq > slot.busy_seq:
                        slot.busy_until = 0.0
                elif isinstance(msg, wire.Stats):
                    slot.report = json.loads(wire.read_body(fds[0]))
                    event = slot.pending.pop(msg.seq, None)
                    if event is not None:
                        event.set()
            except (WireError, ValueError, OSError) as exc:
                log.error("bad message from worker %d: %s", slot.index, exc)
            finally:
                for fd in fds:
                    os.close(fd)

    async def _heartbeat(self, slot: Slot, proc) -> None:
        """Ping the worker every HEARTBEAT_INTERVAL; kill it when it stops answering (the
        supervisor then replaces it, as if it had died)."""
        while proc.returncode is None:
            await trio.sleep(HEARTBEAT_INTERVAL)
            now = time.monotonic()
            silent = now - slot.last_pong
            if silent > HEARTBEAT_TIMEOUT and (now > slot.busy_until or silent > BUSY_GRACE):
                slot.hung = f"hung: no heartbeat answer for {silent:.1f}s, killed"
                log.error("worker %d (pid %d) has not answered the heartbeat for %.1fs; killing it",
                          slot.index, proc.pid, silent)
                proc.kill()
                return
            self.send(slot, wire.Ping(seq=next(self._seq)))

    async def scrape(self, timeout: float = 2.0) -> dict[int, dict[str, Any]]:
        """Each live worker's Stats ({"metrics", "pods", "certs", "pid", ...}); a worker that
        does not answer in time is left out."""
        out: dict[int, dict[str, Any]] = {}

        async def one(slot: Slot) -> None:
            seq, event = next(self._seq), trio.Event()
            slot.pending[seq] = event
            self.send(slot, wire.Scrape(seq=seq))
            with trio.move_on_after(timeout):
                await event.wait()
            slot.pending.pop(seq, None)
            if event.is_set() and slot.report is not None:
                out[slot.index] = slot.report

        async with trio.open_nursery() as n:
            for slot in self.slots:
                if slot.outbox is not None:
                    n.start_soon(one, slot)
        return out

    async def counters(self, timeout: float = 2.0) -> tuple[dict[str, CounterFamily], dict[int, dict[str, Any]]]:
        """Node-wide counters: every live worker's, plus those of workers that died."""
        reports = await self.scrape(timeout)
        return sum_counters([*(parse_counters(r["metrics"]) for r in reports.values()), self.retired]), reports

    # ---- processes -------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                await nursery.start(self._supervise, slot)
            task_status.started()

    async def _supervise(self, slot: Slot, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        backoff, first = 0.0, True
        while not self.stopping:
            try:
                await self._run_one(slot, task_status)
            except OSError as exc:
                if first:
                    raise  # at start-up: fail loudly
                slot.last_exit = f"could not start: {exc}"
            first, task_status = False, trio.TASK_STATUS_IGNORED
            if self.stopping:
                return
            if time.monotonic() - slot.started > STABLE_AFTER:
                backoff = 0.0
            slot.restarts += 1
            log.error("worker %d (pid %s) exited (%s); replacing it in %.1fs, the other workers keep serving",
                      slot.index, slot.pid, slot.last_exit, backoff)
            await trio.sleep(backoff)
            backoff = min(max(MIN_BACKOFF, backoff * 2), MAX_BACKOFF)

    async def _run_one(self, slot: Slot, task_status) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-m", "ztunnel.worker", "--fd", str(theirs.fileno()), "--owner-pid",
                    str(os.getpid()), "--index", str(slot.index), *self.worker_args]
            slot.process = proc = await trio.lowlevel.open_process(argv, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if self.cpus and self.pin:   # before it runs a thread: every thread it starts inherits it
            try:
                os.sched_setaffinity(proc.pid, {self.cpus[slot.index]})
            except OSError as exc:   # still correct, only not local: its connections still arrive
                log.warning("cannot pin worker %d to CPU %d: %s", slot.index, self.cpus[slot.index], exc)
        slot.pid, slot.started, slot.report, slot.hung = proc.pid, time.monotonic(), None, None
        slot.last_pong, slot.busy_until, slot.busy_seq = slot.started, slot.started + BUSY_GRACE, 0
        send, recv = trio.open_memory_channel(math.inf)
        sock = trio.socket.from_stdlib_socket(ours)
        try:
            slot.outbox = send
            self.replay(slot)
            log.info("worker %d started, pid %d", slot.index, proc.pid)
            task_status.started()
            async with trio.open_nursery() as n:
                n.start_soon(self._sender, slot, recv, sock)
                n.start_soon(self._reader, slot, sock)
                n.start_soon(self._heartbeat, slot, proc)
                await proc.wait()
                n.cancel_scope.cancel()
        finally:
            slot.outbox = None
            with trio.CancelScope(shield=True):
                if proc.returncode is None:  # the owner is being cancelled: leave nothing behind
                    proc.kill()
                    await proc.wait()
            slot.last_exit = slot.hung or (f"signal {signal.Signals(-proc.returncode).name}"
                                           if proc.returncode < 0 else f"exit code {proc.returncode}")
            sock.close()
            while True:  # close the fds queued for the dead worker
                try:
                    _msg, _body, fds = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                for fd in fds:
                    os.close(fd)
            if slot.report is not None:
                self.retired = sum_counters([self.retired, parse_counters(slot.report["metrics"])])
                slot.report = None
            for event in slot.pending.values():
                event.set()
            slot.pending.clear()

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker (each drains its connections), wait up to `timeout` and a
        margin, then SIGKILL what is left."""
        self.stopping = True
        procs = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout + 2):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                log.warning("worker pid %d still running after the drain deadline; killing it", p.pid)
                p.kill()

    def dump(self) -> list[dict[str, Any]]:
        return [s.dump() for s in self.slots]
