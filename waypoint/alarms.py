"""Timeouts on a socket wait without a cancel scope per request (`Alarms`).

Entering a trio CancelScope with a deadline registers that deadline with the run and leaving
it removes it again (a context manager and a heap change each way): on the waypoint's hot
path that was the largest single cost after parsing. Here an attempt that waits for a backend
on a file descriptor sets an alarm instead: one object appended to a FIFO queue per timeout
length (deadlines in one queue come in order, so nothing is sorted). One task per trio run
sleeps until the earliest deadline of any queue (cleared alarms leave the queues as new
ones are set, so a queue holds about the requests in flight, whatever the timeout); when an alarm that was not cleared is due it
marks it `fired` and calls `trio.lowlevel.notify_closing(fd)`, so whoever waits on that fd
gets ClosedResourceError at once. The owner then sees `fired` and closes the socket (a
timed-out attempt's connection is never reused anyway). The owner clears its alarm before
it closes or reuses the fd, so a fired alarm never touches another socket's fd.

The deadline is exact (the task sleeps until it); only the first alarm of an empty queue, or
one earlier than everything pending, moves that task's deadline.
"""
from __future__ import annotations

import math
from collections import deque

import trio


class Alarm:
    __slots__ = ("when", "fd", "fired", "done")

    def __init__(self, when: float, fd: int):
        self.when, self.fd = when, fd
        self.fired = self.done = False


class Alarms:
    def __init__(self) -> None:
        self.runs: dict[object, _Run] = {}   # per trio run (its root task)

    def set(self, deadline: float, fd: int, length: float) -> Alarm:
        """An alarm for `fd` at `deadline` (trio's clock); `length` is the timeout it came from,
        so that alarms of one length land in one queue in order."""
        run = self.runs.get(trio.lowlevel.current_root_task())
        if run is None:
            run = self._start()
        a = Alarm(deadline, fd)
        q = run.queues.get(length)
        if q is None:
            q = run.queues[length] = _Queue()
        elif q and q[-1].when > deadline:   # out of order (the clock is monotonic: only a longer wait's
            q = run.stray                   # tail cut by a shorter request timeout): the unsorted queue
        while q and q[0].done:   # cleared alarms leave from the front as they come (nearly all of them)
            q.popleft()
        if len(q) >= q.limit:    # and the rest, behind one still pending, in one pass now and then
            q.compact()
        q.append(a)
        if deadline < run.wake_at:
            run.wake_at = deadline
            run.scope.deadline = deadline
        return a

    def _start(self) -> "_Run":
        root = trio.lowlevel.current_root_task()
        run = self.runs[root] = _Run()
        trio.lowlevel.spawn_system_task(self._sweep, root, run)
        return run

    async def _sweep(self, root, run: "_Run") -> None:
        try:
            while True:
                with trio.CancelScope(deadline=run.wake_at) as run.scope:
                    await trio.sleep_forever()
                now = trio.current_time()
                nxt = math.inf
                for q in run.queues.values():
                    while q and (q[0].done or q[0].when <= now):
                        _ring(q.popleft())
                    if q:
                        nxt = min(nxt, q[0].when)
                if run.stray:
                    keep = _Queue()
                    for a in run.stray:
                        if a.when <= now:
                            _ring(a)
                        elif not a.done:
                            keep.append(a)
                            nxt = min(nxt, a.when)
                    run.stray = keep
                run.wake_at = nxt
        finally:   # the run ends
            self.runs.pop(root, None)


def _ring(a: Alarm) -> None:
    if not a.done:
        a.fired = a.done = True
        trio.lowlevel.notify_closing(a.fd)


class _Queue(deque):
    """Alarms, cleared ones dropped from the front when the next is set; a long-pending one at
    the front would keep every later cleared one, so past `limit` entries the cleared ones
    go in one pass (amortised: the limit is at least twice what stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 1024

    def compact(self) -> None:
        live = [a for a in self if not a.done]
        self.clear()
        self.extend(live)
        self.limit = max(1024, 2 * len(live))


class _Run:
    __slots__ = ("queues", "stray", "wake_at", "scope")

    def __init__(self) -> None:
        self.queues: dict[float, _Queue] = {}
        self.stray = _Queue()
        self.wake_at = math.inf
        self.scope = trio.CancelScope()


ALARMS = Alarms()
