"""What one HBONE connection knows about one of its tunnels (`StreamState`).

The connection's reader writes it (bytes received, END_STREAM, RST_STREAM, the answer to
a CONNECT); the tunnel's `HboneStream`, the client pool and the relay machinery read it
and wait on it. Everything they touch is here, named; a relayed stream also carries a
`relay.RelayLink` (`link`) with the relay's own state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from trio.lowlevel import Abort, current_task, notify_closing, reschedule, wait_task_rescheduled

from . import codec as c

if TYPE_CHECKING:
    from .relay import RelayLink


class StreamState:
    """One tunnel's state on its connection.

    - `received`: bytes received and not yet taken by the application, oldest first
      (a list: an idle deque costs 600 B)
    - `recv_ended` / `send_ended`: END_STREAM received / sent
    - `reset_code`: the RST_STREAM code, once the tunnel was reset (by either side)
    - `response`: the answer to our CONNECT (client side)
    - `taken` / `sent`: bytes handed to the application / framed into the tunnel
    - `link`: the relay's state while the tunnel is relayed to a socket
    - `pending_scope`: the work to answer the tunnel (the server's handler, until it
      answers); a reset cancels it, so a tunnel reset early never reaches the app
    """
    __slots__ = ("received", "recv_ended", "send_ended", "reset_code", "response", "taken", "sent", "link",
                 "pending_scope", "_waiting")

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.recv_ended = False
        self.send_ended = False
        self.reset_code: int | None = None
        self.response: c.TunnelOpened | c.TunnelRefused | None = None
        self.taken = 0
        self.sent = 0
        self.link: RelayLink | None = None
        self.pending_scope: trio.CancelScope | None = None
        # the tasks in wait(), as a list of trio tasks (None: nobody), instead of a trio
        # ParkingLot: its park and unpark_all cost ~3 us more than this per wakeup, and a
        # stream wakes its reader once per request each way (the waypoint, the relays)
        self._waiting: list | None = None

    async def wait(self) -> None:
        """Until something about this stream changes (`notify`); callers re-check in a loop."""
        task = current_task()
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
        waiting.append(task)

        def abort(_raise_cancel) -> Abort:   # cancelled while parked: out of the list it is in
            if waiting is self._waiting:
                waiting.remove(task)
            return Abort.SUCCEEDED
        await wait_task_rescheduled(abort)

    def notify(self) -> None:
        """Wake the tasks in `wait()`."""
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            for task in waiting:
                reschedule(task)

    def interrupt(self) -> None:
        """Wake everyone waiting on this stream, a relay waiting on its socket included
        (notify_closing ends that wait; the relay then finds out why and stops)."""
        self.notify()
        if self.link is not None:
            notify_closing(self.link.sock)

    def mark_reset(self, code: int) -> None:
        self.reset_code = code
        if self.pending_scope is not None:
            self.pending_scope.cancel()
        self.interrupt()

    def take_received(self, limit: int) -> bytes:
        """The oldest received bytes, at most `limit` of them (there must be some)."""
        chunk = self.received.pop(0)
        if len(chunk) > limit:
            self.received.insert(0, chunk[limit:])
            chunk = chunk[:limit]
        self.taken += len(chunk)
        return chunk

    def discard_received(self) -> int:
        """Drop what the application will never read; return how many bytes that was."""
        unread = sum(map(len, self.received))
        self.received.clear()
        return unread
