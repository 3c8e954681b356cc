"""The versioned store: the current set of resources under a version number, a short
history so that a watch can resume with a delta, and change notification.

It knows nothing of where resources come from: a config source (controlplane/sources/)
validates what it reads and `publish`es the whole effective set; the store bumps the
version only when that set differs from the current one. Readers use the public API
(`current`, `changes_since`, `wait_for_change`), never the internals."""
from __future__ import annotations

import collections
import logging
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import trio

from meshcore.resources import Resource, ResourceError

from .views import View, delta

log = logging.getLogger("trellis.controlplane.store")
HISTORY = 100


@dataclass(frozen=True)
class Snapshot:
    """One published state: what a reader sees, never changed after publication."""
    version: int
    resources: Mapping[tuple, Resource]
    errors: tuple[ResourceError, ...] = ()
    source: str = field(default="", compare=False)


class VersionedStore:
    def __init__(self, first_version: int | None = None, history: int = HISTORY):
        # Versions must never repeat across restarts: a watch resumes "since" a version, and
        # a restarted store that counted from 1 again would answer with a delta against
        # different content. Starting from the clock (ms) keeps them increasing.
        self.first_version = first_version if first_version is not None else int(time.time() * 1000)
        self._history_len = history
        self._current = Snapshot(0, types.MappingProxyType({}))
        self._history: collections.OrderedDict[int, Mapping[tuple, Resource]] = collections.OrderedDict()
        self._changed = trio.Event()

    # -- readers -------------------------------------------------------------------------
    def current(self) -> Snapshot:
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    def versions(self) -> list[int]:
        """The versions a watch can still resume from, oldest first."""
        return list(self._history)

    def changes_since(self, since: int, view: Callable[[Mapping[tuple, Resource]], View]
                      ) -> tuple[Snapshot, list[dict], list[list[str]]] | None:
        """(current snapshot, upserts, deletes) that take a subscriber from `since` to now,
        both seen through `view`; None when `since` is no longer (or never was) in history."""
        old = self._history.get(since)
        if old is None or since > self._current.version:
            return None
        snap = self._current
        upserts, deletes = delta(view(old), view(snap.resources))
        return snap, upserts, deletes

    async def wait_for_change(self, since: int) -> Snapshot:
        """Return the current snapshot as soon as its version is newer than `since`."""
        while self._current.version <= since:
            await self._changed.wait()
        return self._current

    # -- the writer: a config source -----------------------------------------------------
    def publish(self, resources: Iterable[Resource], errors: Iterable[ResourceError] = (), source: str = "") -> bool:
        """Make `resources` the current state; True if that changed anything (errors alone
        are recorded but do not bump the version: subscribers see no difference)."""
        new = {r.key: r for r in resources}
        errors = tuple(errors)
        if self._current.version and _raw(new) == _raw(self._current.resources):
            if errors != self._current.errors:
                self._current = Snapshot(self._current.version, self._current.resources, errors, source)
                _log_errors(errors)
            return False
        version = self._current.version + 1 if self._current.version else self.first_version
        frozen = types.MappingProxyType(new)
        self._current = Snapshot(version, frozen, errors, source)
        self._history[version] = frozen
        while len(self._history) > self._history_len:
            self._history.popitem(last=False)
        log.info("event=config_version version=%d resources=%d errors=%d", version, len(new), len(errors))
        _log_errors(errors)
        old, self._changed = self._changed, trio.Event()
        old.set()
        return True

    def dump(self) -> dict:
        snap = self._current
        return {"version": snap.version, "source": snap.source,
                "resources": [r.to_dict() for r in snap.resources.values()],
                "errors": [str(e) for e in snap.errors]}


def _log_errors(errors: tuple[ResourceError, ...]) -> None:
    for e in errors:
        log.warning("event=config_error %s", e)


def _raw(resources: Mapping[tuple, Resource]) -> dict:
    return {k: r.raw for k, r in resources.items()}
