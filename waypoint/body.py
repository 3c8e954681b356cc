"""A client's request body, streamed through the waypoint (HTTP/1.1 Content-Length or chunked,
HTTP/2 DATA), read once from the client and kept for retries up to a bound (Envoy's retry
buffer: `filters.retry.ReplayBody`, 64 KiB). A body longer than that has streamed away, so
its request is not retried once the body started flowing (RetryState sees `overflowed`).

Backpressure is the transport's: the next chunk is read from the client only when the
previous one was written to the backend (HTTP/1.1: TCP; HTTP/2: the adapter acknowledges
DATA only when read, so the client's window closes while the backend is slow).

`poll()` takes what the client already sent without waiting: a body that is complete by
then (nearly always: GETs and small POSTs) goes out with the request head in one write,
without a second task. Otherwise each attempt pumps the body from a `cursor()`: first what
was kept, then the rest from the client; a newer cursor supersedes an older one, so a
cancelled attempt never reads the client's next bytes.
"""
from __future__ import annotations

from typing import Protocol

import trio

from .filters.retry import MAX_REPLAY_BYTES, ReplayBody
from .http.events import EndOfMessage


class BodyError(Exception):
    """The client's body could not be read: answer `status` if no response started, then close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Source(Protocol):
    def poll(self) -> bytes | EndOfMessage | None: ...          # None: nothing yet
    async def read(self) -> bytes | EndOfMessage: ...            # raises BodyError
    async def begin(self) -> None: ...                           # the first read may wait (100 Continue)


class RequestBody:
    def __init__(self, source: Source | None = None, length: int | None = None, limit: int = MAX_REPLAY_BYTES):
        self.source, self.length = source, length
        self.replay = ReplayBody(limit=limit)
        self.done = source is None          # the client sent all of it
        self.trailers: tuple = ()
        self.error: BodyError | None = None
        self.received = 0
        self._held: bytes | None = None     # polled, but over the replay bound: the first attempt takes it
        self._current: _Cursor | None = None
        self._begun = False

    def poll(self) -> bool:
        """Take what is already here; True when the whole body is here and kept (`whole()`)."""
        while not self.done and self._held is None:
            got = self.source.poll()
            if got is None:
                break
            if isinstance(got, EndOfMessage):
                self.done, self.trailers = True, got.trailers
            elif self.replay.size + len(got) > self.replay.limit:
                self._held = got
            else:
                self.received += len(got)
                self.replay.add(got)
        return self.complete

    @property
    def complete(self) -> bool:
        return self.done and self._held is None and not self.replay.overflowed

    @property
    def replayable(self) -> bool:
        """Another attempt can send the body again (nothing of it streamed away unkept)."""
        return not self.replay.overflowed

    def whole(self) -> bytes:
        chunks = self.replay.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def begin(self) -> None:
        """Before the first attempt of a body still to come (HTTP/1.1 `100 Continue`)."""
        if not self._begun and not self.done and self.source is not None:
            self._begun = True
            await self.source.begin()

    def cursor(self) -> "_Cursor":
        self._current = _Cursor(self)
        return self._current

    async def _next(self, cur: "_Cursor") -> bytes | None:
        chunks = self.replay.chunks
        if cur.i < len(chunks):
            cur.i += 1
            return chunks[cur.i - 1]
        if cur is not self._current:
            raise trio.ClosedResourceError("a newer attempt took over the request body")
        if self._held is not None:
            got, self._held = self._held, None
        elif self.done:
            return None
        else:
            got = await self.source.read()
            if isinstance(got, EndOfMessage):
                self.done, self.trailers = True, got.trailers
                return None
        self.received += len(got)
        self.replay.add(got)
        cur.i = len(self.replay.chunks)
        return got


class _Cursor:
    """One attempt's position in the body."""

    def __init__(self, body: RequestBody):
        self.body, self.i = body, 0

    async def next(self) -> bytes | None:
        """The next chunk for this attempt; None at the end (trailers: body.trailers)."""
        return await self.body._next(self)

