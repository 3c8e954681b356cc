"""One collection mirrored from the API server, with the semantics of client-go's reflector:

- LIST, then WATCH from the list's resourceVersion, with allowWatchBookmarks and a
  server-side timeoutSeconds (jittered, so that watches do not all end together);
- every event and every BOOKMARK moves the resourceVersion to resume from, so a watch
  that ends (its timeout, a dropped connection, a 500) resumes where it stopped: what
  changed meanwhile arrives once, neither lost nor repeated;
- 410 Gone (an ERROR event or an HTTP 410) means that resourceVersion has left the
  server's history: relist, and replace the collection with what the list says (objects
  deleted meanwhile disappear);
- any other failure backs off exponentially with jitter, never spinning.
What to do with the objects is the caller's: `replace(items)` after each list,
`apply(type, obj)` for each event."""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import httpx2 as httpx
import trio

from .client import Gone, KubeApi, KubeApiError, describe

log = logging.getLogger("trellis.kubewatch")


@dataclass
class Backoff:
    """Exponential back-off with jitter: each delay is drawn from [d/2, d], d doubling."""
    initial: float = 0.5
    maximum: float = 30.0
    attempt: int = 0
    delays: list = field(default_factory=list)  # what was slept, for the admin dump and the tests

    def next(self) -> float:
        base = min(self.maximum, self.initial * 2 ** self.attempt)
        self.attempt += 1
        delay = random.uniform(base / 2, base)
        self.delays = (self.delays + [delay])[-20:]
        return delay

    def reset(self) -> None:
        self.attempt = 0


async def reflect(api: KubeApi, path: str, *, replace: Callable[[list], None], apply: Callable[[str, dict], None],
                  backoff: Backoff, stats: Counter, watch_timeout: int = 300, params: dict | None = None) -> None:
    """Mirror `path` (with list/watch `params`, e.g. a fieldSelector) forever."""
    rv: str | None = None
    while True:
        listed = False
        try:
            if rv is None:
                items, rv = await api.list(path, params)
                stats["lists"] += 1
                replace(items)
                listed = True
            opened, delivered = trio.current_time(), 0
            stats["watches"] += 1
            async for event in api.watch(path, rv, int(watch_timeout * random.uniform(1, 2)), params):
                delivered += 1
                if delivered == 1:
                    backoff.reset()  # the watch works again
                if event.type == "BOOKMARK":
                    stats["bookmarks"] += 1
                else:
                    apply(event.type, event.object)
                rv = (event.object.get("metadata") or {}).get("resourceVersion") or rv
            if not delivered and trio.current_time() - opened < 1.0:
                raise KubeApiError(0, "ShortWatch", "the watch ended at once, with no event", path)
            backoff.reset()
        except Gone as exc:
            stats["relists"] += 1
            log.info("event=kubernetes_relist path=%s reason=%r", path, str(exc))
            rv = None
            if listed:  # Gone from the version just listed: a confused server; do not spin
                await _back_off(path, backoff, stats, exc)
        except KubeApiError as exc:
            if exc.code == 404 and rv is None:
                replace([])  # not installed (e.g. no Gateway API CRDs): empty until it is
            await _back_off(path, backoff, stats, exc)
        except (httpx.HTTPError, OSError) as exc:
            await _back_off(path, backoff, stats, exc)
        except Exception as exc:  # a bug or a reply we never imagined: report, keep serving
            log.exception("event=kubernetes_reflector_failed path=%s", path)
            await _back_off(path, backoff, stats, exc)


async def _back_off(path: str, backoff: Backoff, stats: Counter, exc: BaseException) -> None:
    stats["errors"] += 1
    delay = backoff.next()
    log.warning("event=kubernetes_error path=%s error=%r retry_in=%.2fs", path, describe(exc), delay)
    await trio.sleep(delay)
