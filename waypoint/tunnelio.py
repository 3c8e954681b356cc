"""The object the waypoint's hot path reads and writes a connection with (`io_for`).

An HBONE tunnel (`meshcore.hbone.HboneStream`) is written with `send_eager`, which skips
send_all's leading checkpoint: the proxy's next step after a write is a read that waits
for the peer, so that checkpoint only cost a scheduler round trip per write (two per
proxied request, one each side). Its `receive_some` already yields only by waiting when
nothing has arrived. A plain TCP socket gets `fastio.fast`'s wrapper; anything else is
used as it is.
"""
from __future__ import annotations

import trio

from meshcore.hbone import HboneStream

from .fastio import fast


class Tunnel:
    __slots__ = ("receive_some", "send_all")

    def __init__(self, stream: HboneStream):
        self.receive_some = stream.receive_some
        self.send_all = stream.send_eager


def io_for(stream: trio.abc.Stream):
    return Tunnel(stream) if type(stream) is HboneStream else fast(stream)
