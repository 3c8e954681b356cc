"""IdleWatch cancels a connection that waited longer than its timeout, between timeout and
timeout plus a quarter of it, and never one that is working."""
from __future__ import annotations

import trio

from waypoint.idlewatch import IdleWatch


async def test_only_the_connection_idle_too_long_is_cancelled(autojump_clock):
    watch = IdleWatch()
    ended: dict[str, float] = {}

    async def conn(name: str, idle: bool, started: float, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            w = watch.watch(scope, 10.0)
            task_status.started()
            w.idle_since = started if idle else None   # waiting for a request since `started`, or working
            await trio.sleep(100)
        ended[name] = trio.current_time()
        watch.forget(w)

    async with trio.open_nursery() as n:
        t0 = trio.current_time()
        await n.start(conn, "idle", True, t0)
        await n.start(conn, "busy", False, t0)
    assert t0 + 10.0 <= ended["idle"] <= t0 + 12.5   # cut within a quarter of the timeout after it
    assert ended["busy"] == t0 + 100                  # working: never cut
    assert not any(watch.runs.values())
