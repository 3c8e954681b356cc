"""The directory source: every *.yaml/*.yml under a directory, polled for changes.

A file whose new content is invalid keeps its last good objects (and the error is
reported): a typo in one file never takes down what is already running."""
from __future__ import annotations

import logging
from pathlib import Path

import trio

from meshcore.resources import LoadResult, ResourceError, load_file
from meshcore.resources.loader import yaml_files

from ..store import VersionedStore
from . import settle

log = logging.getLogger("trellis.controlplane.sources.directory")


class DirectorySource:
    def __init__(self, config_dir: str | Path, store: VersionedStore, poll_interval: float = 0.5):
        self.dir = Path(config_dir)
        self.store = store
        self.poll_interval = poll_interval
        self._good: dict[Path, list] = {}
        self._fingerprint: tuple = ()
        self._loaded = False

    def describe(self) -> str:
        return f"directory {self.dir}"

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
        """Re-read the directory and publish it; True if the effective config changed."""
        self._fingerprint = self._scan()
        self._loaded = True
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
        resources, settled = settle(merged.resources)
        return self.store.publish(resources, errors + settled, self.describe())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Publish the directory once, report started, then poll it for changes."""
        if not self._loaded:
            self.reload()
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            if self._scan() != self._fingerprint:
                try:
                    self.reload()
                except Exception:  # never let one bad read stop the watch
                    log.exception("event=config_reload_failed dir=%s", self.dir)
