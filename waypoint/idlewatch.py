"""Idle timeouts without a cancel-scope deadline moved per request (`IdleWatch`).

Moving a trio CancelScope's deadline re-registers it with the run (a context manager and a
heap entry each time): twice per request on a keep-alive connection, about 3% of the
in-mesh waypoint's CPU. Here a connection only notes when it started waiting
(`idle_since`, None while it works); one task per trio run looks at every watched
connection each quarter of its timeout (at most every second) and cancels the scope of
those that waited longer than their timeout, so a connection is cut between `timeout` and
`timeout` plus that period after its last request.
"""
from __future__ import annotations

import math

import trio


class Watched:
    """What IdleWatch needs from a connection: its scope and when it started waiting."""
    __slots__ = ("scope", "idle_since", "timeout")

    def __init__(self, scope: trio.CancelScope, timeout: float):
        self.scope, self.timeout = scope, timeout
        self.idle_since: float | None = None


class IdleWatch:
    def __init__(self) -> None:
        self.runs: dict[object, set[Watched]] = {}   # per trio run (its root task): the watched connections

    def watch(self, scope: trio.CancelScope, timeout: float) -> Watched:
        run = trio.lowlevel.current_root_task()
        watched = self.runs.get(run)
        if watched is None:   # the first connection of this trio run: start its sweeper
            watched = self.runs[run] = set()
            trio.lowlevel.spawn_system_task(self._sweep, run, watched)
        w = Watched(scope, timeout)
        watched.add(w)
        return w

    def forget(self, w: Watched) -> None:
        watched = self.runs.get(trio.lowlevel.current_root_task())
        if watched is not None:
            watched.discard(w)

    async def _sweep(self, run, watched: set[Watched]) -> None:
        try:
            while True:
                period = min([1.0] + [w.timeout / 4 for w in watched])
                await trio.sleep(period if period > 0 and period != math.inf else 1.0)
                now = trio.current_time()
                for w in watched:
                    if w.idle_since is not None and now - w.idle_since >= w.timeout:
                        w.scope.cancel()
        finally:   # the run ends
            self.runs.pop(run, None)


WATCH = IdleWatch()
