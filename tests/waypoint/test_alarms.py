"""Alarms end a wait on a socket at its deadline (ClosedResourceError for the waiter, `fired`
for its owner), never touch one that was cleared, keep exact deadlines across queues and out
of order, and hold about what is pending, not everything ever set."""
from __future__ import annotations

import trio

from waypoint.alarms import Alarms


async def _wait(sock: trio.socket.SocketType, alarm_of, ended: dict, name: str) -> None:
    try:
        await trio.lowlevel.wait_readable(sock)
        ended[name] = ("readable", trio.current_time())
    except trio.ClosedResourceError:
        ended[name] = ("alarm", trio.current_time(), alarm_of().fired)


async def test_a_due_alarm_ends_the_wait_and_a_cleared_one_never_does(autojump_clock):
    alarms = Alarms()
    pairs = [trio.socket.socketpair() for _ in range(4)]
    ended: dict = {}
    t0 = trio.current_time()
    set_ = {}
    async with trio.open_nursery() as n:
        # two lengths (two queues), and one out of order in the first: every deadline exact
        for name, (a, _), when, length in (("a", pairs[0], 5.0, 5.0), ("b", pairs[1], 2.0, 2.0),
                                           ("c", pairs[2], 1.0, 5.0)):
            set_[name] = alarms.set(t0 + when, a.fileno(), length)
            n.start_soon(_wait, a, lambda name=name: set_[name], ended, name)
        # cleared before it is due: the wait goes on and ends when data comes
        set_["d"] = alarms.set(t0 + 3.0, pairs[3][0].fileno(), 3.0)
        n.start_soon(_wait, pairs[3][0], lambda: set_["d"], ended, "d")
        await trio.sleep(0.5)
        set_["d"].done = True
        await trio.sleep(9.5)
        await pairs[3][1].send(b"x")
    assert ended["a"] == ("alarm", t0 + 5.0, True)
    assert ended["b"] == ("alarm", t0 + 2.0, True)
    assert ended["c"] == ("alarm", t0 + 1.0, True)
    assert ended["d"] == ("readable", t0 + 10.0) and not set_["d"].fired
    for a, b in pairs:
        a.close()
        b.close()


async def test_a_queue_holds_what_is_pending_not_everything_set(autojump_clock):
    alarms = Alarms()
    a, b = trio.socket.socketpair()
    with a, b:
        pending = alarms.set(trio.current_time() + 300, a.fileno(), 300.0)   # a long request at the front
        for _ in range(10_000):   # then many short ones, each cleared at once (a request that ended)
            alarms.set(trio.current_time() + 300, a.fileno(), 300.0).done = True
        run = next(iter(alarms.runs.values()))
        assert len(run.queues[300.0]) <= 2048
        assert run.queues[300.0][0] is pending
        pending.done = True
