"""Small pieces of one exchange that the general pipeline (pipeline.py) and the lean HTTP/1.1
path (fast1.py) share: the request as it goes upstream, the response head as it goes back,
and deadlines as trio cancel scopes."""
from __future__ import annotations

import dataclasses
import math
from typing import Awaitable, Callable

import trio

from .body import RequestBody
from .http.events import HOP_BY_HOP, Request, Response, end_to_end, trusted_response
from .routing import apply_response_headers

Send = Callable[..., Awaitable[None]]   # send(event, more=False): more=True may hold it back to batch the write

# never forwarded upstream: hop-by-hop fields, the framing (set again for the body as sent), the
# client's traceparent (this hop's span replaces it) and Expect (the waypoint answered it)
_NOT_FORWARDED = HOP_BY_HOP | {"content-length", "traceparent", "expect"}


def forwarded_fields(headers) -> tuple:
    """`without(end_to_end(headers), "content-length", "traceparent", "expect")` in one pass."""
    return end_to_end(headers, _NOT_FORWARDED)


def outgoing(req: Request, body: RequestBody, traceparent: str) -> Request:
    """The request as it goes upstream: hop-by-hop fields dropped (Expect too: the waypoint
    answered it), the traceparent of this hop's span, and the body's framing."""
    headers = forwarded_fields(req.headers) + (("traceparent", traceparent),)
    if body.complete:
        size = body.replay.size
        if size or req.method in ("POST", "PUT", "PATCH"):
            headers += (("content-length", str(size)),)
    elif body.length is not None:
        headers += (("content-length", str(body.length)),)
    elif req.http_version != "2":
        headers += (("transfer-encoding", "chunked"),)   # length unknown: chunked to the HTTP/1.1 backend
    return req.trusted(headers=headers)   # validated already: the client's fields, ours added


def response_head(resp: Response, headers, decision) -> Response:
    """The head sent back: the backend's end-to-end `headers` with the route's response
    header modifiers, if any."""
    if decision is not None and decision.response_headers:   # values from the config: checked
        return Response(resp.status, apply_response_headers(headers, decision.response_headers), resp.reason)
    return trusted_response(resp.status, headers, resp.reason)   # the backend's own fields, validated when parsed


class _NoDeadline:
    """What `scope` gives for no deadline (the default: routes without timeouts): entering and
    leaving a trio CancelScope costs more than the rest of a small filter."""
    cancelled_caught = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


_NO_DEADLINE = _NoDeadline()


def scope(deadline: float):
    return _NO_DEADLINE if deadline == math.inf else trio.CancelScope(deadline=deadline)


def adding_headers(send: Send, extra: tuple) -> Send:
    """`send` with `extra` appended to the response head."""
    async def wrapped(ev, more: bool = False) -> None:
        if isinstance(ev, Response):
            ev = dataclasses.replace(ev, headers=tuple(ev.headers) + extra)
        await send(ev, more)
    return wrapped


def trio_deadline(when: float | None, clock: Callable[[], float]) -> float:
    """A deadline on `clock` as a trio deadline (inf: none)."""
    if when is None:
        return float("inf")
    return trio.current_time() + (when - clock())
