"""The node agent's loop: control-plane view -> reconcile -> attach/detach + handoff.

Enroll = attach capture (+ STRICT) programs to the pod's cgroup, then hand its netns and
listening sockets to ztunnel; unenroll = detach, then tell ztunnel. After the first full
view is handed over, ztunnel learns the snapshot is complete (and drops pods we lack). Reconciles on every update and every
RECONCILE_INTERVAL, which is also how a pod without a process yet gets retried and how
a restarted ztunnel gets its pods back. On shutdown every attachment is removed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import trio

from meshcore.netns import netns_path
from . import cgroups, inpod, reconcile
from .cgroups import CgroupError
from .handoff import HandoffClient, HandoffError
from .loader import LoaderError, Programs
from .reconcile import Enroll, SetStrict, Unenroll

log = logging.getLogger("trellis.nodeagent")

RECONCILE_INTERVAL = 2.0
# How often a lost ztunnel is looked for: connections queue in the kernel meanwhile, so
# this is the longest a restart makes them wait beyond ztunnel's own start-up.
HANDOFF_POLL = 0.1


class NodeAgent:
    def __init__(self, node: str, programs: Programs, handoff: HandoffClient,
                 find_cgroup=lambda pod: cgroups.pod_cgroup(netns_path(pod.netns))):
        self.node, self.programs, self.handoff = node, programs, handoff
        self._find_cgroup = find_cgroup
        self.resources: Mapping[Any, Any] = {}
        self.version: int | None = None
        self.enrolled: dict[str, Enroll] = {}
        self.cgroup_of: dict[str, Path] = {}
        self._changed = trio.Event()

    # called by the control-plane watch with the full current view
    def on_update(self, resources: Mapping[Any, Any], version: int | None = None) -> None:
        self.resources, self.version = dict(resources), version
        self._changed.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._changed = trio.Event()
            await self.reconcile_once()
            if self.version is not None:
                # Every pod of a full view is handed over: ztunnel may drop the rest.
                await self.handoff.snapshot_sent()
            with trio.move_on_after(RECONCILE_INTERVAL):
                await self._watch_ztunnel()

    async def _watch_ztunnel(self) -> None:
        """Return on a config change; meanwhile reconnect (and replay) as soon as a
        ztunnel goes away and another one listens."""
        while not self._changed.is_set():
            if self.handoff.peer_gone() or not self.handoff.connected:
                await self.handoff.ensure_connected()
            with trio.move_on_after(HANDOFF_POLL):
                await self._changed.wait()

    async def reconcile_once(self) -> None:
        await self.handoff.ensure_connected()
        for action in reconcile.reconcile(self.resources, self.node, self.enrolled):
            try:
                await self._apply(action)
            except (LoaderError, CgroupError, HandoffError) as e:
                log.warning("%s failed, retrying in %.0fs: %s", _describe(action), RECONCILE_INTERVAL, e)

    async def _apply(self, action) -> None:
        if isinstance(action, Enroll):
            await self._enroll(action)
        elif isinstance(action, Unenroll):
            await self._unenroll(action.uid)
        elif isinstance(action, SetStrict):
            self.programs.set_strict(self.cgroup_of[action.uid], action.on)
            self.enrolled = reconcile.apply(self.enrolled, action)
            log.info("pod %s: mTLS mode %s (cgroup %s)", action.uid,
                     "STRICT" if action.on else "PERMISSIVE", self.cgroup_of[action.uid])

    async def _enroll(self, action: Enroll) -> None:
        pod = action.pod
        cgroup = self._find_cgroup(pod)
        if cgroup is None:
            log.info("pod %s: no process in netns %s yet; will retry", pod.uid, pod.netns)
            return
        progs = self.programs.attach(cgroup, strict=action.strict)
        # Before the handoff, so the route back for callers' addresses exists when ztunnel
        # first serves the pod (it checks, and falls back to the pod's address without it).
        await inpod.try_install(pod.uid, pod.netns)
        try:
            await self.handoff.add(pod)
        except HandoffError:
            self.programs.detach(cgroup)  # capture without ztunnel would black-hole traffic
            raise
        self.cgroup_of[pod.uid] = cgroup
        self.enrolled = reconcile.apply(self.enrolled, action)
        log.info("enrolled pod %s (netns %s, cgroup %s): %s", pod.uid, pod.netns, cgroup, ", ".join(progs))

    async def _unenroll(self, uid: str) -> None:
        cgroup = self.cgroup_of.get(uid)
        progs = self.programs.detach(cgroup) if cgroup else []
        self.cgroup_of.pop(uid, None)
        was = self.enrolled.get(uid)
        self.enrolled = reconcile.apply(self.enrolled, Unenroll(uid))
        try:
            await self.handoff.remove(uid)
        finally:
            if was is not None:   # after ztunnel stopped taking new connections for the pod
                await inpod.try_remove(uid, was.pod.netns)
            log.info("unenrolled pod %s (cgroup %s): detached %s", uid, cgroup, ", ".join(progs) or "nothing")

    def shutdown(self) -> None:
        """Detach every program from every cgroup (sync: runs even while cancelled)."""
        for uid, cgroup in list(self.cgroup_of.items()):
            try:
                progs = self.programs.detach(cgroup)
                log.info("shutdown: detached %s from pod %s (cgroup %s)", ", ".join(progs), uid, cgroup)
            except LoaderError as e:
                log.error("shutdown: %s", e)
        self.programs.detach_all()


def _describe(action) -> str:
    if isinstance(action, Enroll):
        return f"enrolling pod {action.pod.uid}"
    if isinstance(action, Unenroll):
        return f"unenrolling pod {action.uid}"
    return f"setting mTLS mode of pod {action.uid}"
