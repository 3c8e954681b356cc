"""The config store: a directory of YAML, watched; a global version bumps on every
effective change, with a short history so that watches can resume with a delta.

A file whose new content is invalid keeps its last good objects (and the error is
reported): a typo in one file never takes down what is already running."""
from __future__ import annotations

import collections
import logging
import time
from pathlib import Path

import trio

from meshcore.resources import LoadResult, Resource, ResourceError, check_references, load_file
from meshcore.resources.loader import dedupe, yaml_files

log = logging.getLogger("trellis.controlplane.store")
HISTORY = 100


class ConfigStore:
    def __init__(self, config_dir: str | Path, poll_interval: float = 0.5, first_version: int | None = None):
        self.dir = Path(config_dir)
        self.poll_interval = poll_interval
        # Versions must never repeat across restarts: a watch resumes "since" a version, and
        # a restarted store that counted from 1 again would answer with a delta against
        # different content. Starting from the clock (ms) keeps them increasing.
        self.first_version = first_version if first_version is not None else int(time.time() * 1000)
        self.version = 0
        self.resources: dict[tuple, Resource] = {}
        self.errors: list[ResourceError] = []
        self.history: collections.OrderedDict[int, dict[tuple, Resource]] = collections.OrderedDict()
        self._good: dict[Path, list[Resource]] = {}
        self._fingerprint: tuple = ()
        self._changed = trio.Event()

    def _scan(self) -> tuple:
        out = []
        for f in yaml_files(self.dir) if self.dir.is_dir() else []:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self) -> bool:
        """Re-read the directory; return True if the effective config changed."""
        self._fingerprint = self._scan()
        merged, errors = LoadResult(), []
        files = [Path(f) for f, _, _ in self._fingerprint]
        if not self.dir.is_dir():
            errors.append(ResourceError(str(self.dir), "directory", "", "config directory does not exist"))
        for f in files:
            res = load_file(f)
            if res.errors:
                errors += res.errors
                kept = self._good.get(f)
                if kept is not None:
                    log.warning("event=config_invalid file=%s keeping=%d error=%r", f, len(kept), str(res.errors[0]))
                    res = LoadResult(resources=list(kept))
            else:
                self._good[f] = res.resources
            merged.resources += res.resources
        for gone in set(self._good) - set(files):
            del self._good[gone]
        merged = dedupe(merged)
        errors += merged.errors + check_references(merged.resources)
        self.errors = errors
        new = {r.key: r for r in merged.resources}
        if _raw(new) == _raw(self.resources) and self.version:
            return False
        self.version = self.version + 1 if self.version else self.first_version
        self.resources = new
        self.history[self.version] = new
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)
        log.info("event=config_version version=%d resources=%d errors=%d", self.version, len(new), len(errors))
        for e in errors:
            log.warning("event=config_error %s", e)
        old, self._changed = self._changed, trio.Event()
        old.set()
        return True

    async def wait_changed(self, since: int) -> None:
        while self.version <= since:
            await self._changed.wait()

    async def watch(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if not self.version:
            self.reload()
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            if self._scan() != self._fingerprint:
                try:
                    self.reload()
                except Exception:  # never let one bad read stop the watch
                    log.exception("event=config_reload_failed dir=%s", self.dir)

    def dump(self) -> dict:
        return {"version": self.version, "configDir": str(self.dir),
                "resources": [r.to_dict() for r in self.resources.values()],
                "errors": [str(e) for e in self.errors]}


def _raw(resources: dict[tuple, Resource]) -> dict:
    return {k: r.raw for k, r in resources.items()}
