"""The agent on a real pod: enroll when a process appears, STRICT on/off, unenroll,
and `python -m nodeagent` detaching everything on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import trio

from na_helpers import bpftool_show
from nodeagent.agent import NodeAgent
from nodeagent.handoff import HandoffClient
from test_na_handoff import FakeZtunnelPeer
from test_na_reconcile import ns, pa, res, we

CAPTURE = ["trellis_connect4", "trellis_connect6", "trellis_sockops"]


def names(cgroup) -> list[str]:
    return sorted(a["name"] for a in bpftool_show(cgroup))


def inpod_rules(pod) -> int:
    out = subprocess.run(["ip", "-n", pod.netns, "-j", "rule", "list", "pref", "32764"], capture_output=True,
                         text=True, check=True).stdout
    return len(json.loads(out or "[]"))


def workload(pod) -> R:
    return we("default", pod.id, node="n1", netns=pod.netns, labels={"app": "web"}, sa="web", address=pod.pod_ip)


async def test_enroll_strict_unenroll(programs, pod, tmp_path):
    peer = FakeZtunnelPeer(tmp_path / "ztunnel.sock")
    agent = NodeAgent("n1", programs, HandoffClient(peer.path, "n1", programs.origdst_fd))
    uid = f"default/{pod.id}"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            agent.on_update(res(ns("default"), workload(pod)), 1)
            await agent.reconcile_once()
            assert agent.enrolled == {} and names(pod.cgroup) == []  # no process yet
            proc = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")
            assert proc.stdout.readline().strip() == "up"
            await agent.reconcile_once()
            assert list(agent.enrolled) == [uid] and agent.cgroup_of[uid] == pod.cgroup
            assert names(pod.cgroup) == CAPTURE
            assert peer.ops() == ["hello", "add"]
            assert inpod_rules(pod) == 1   # the route back for callers' addresses (meshcore.inpod)

            strict = pa("default", "strict", "STRICT")
            agent.on_update(res(ns("default"), workload(pod), strict), 2)
            await agent.reconcile_once()
            assert names(pod.cgroup) == sorted(CAPTURE + ["trellis_strict_ingress"])

            agent.on_update(res(ns("default"), strict), 3)
            await agent.reconcile_once()
            assert names(pod.cgroup) == [] and agent.enrolled == {}
            assert peer.ops() == ["hello", "add", "remove"]
            assert inpod_rules(pod) == 0

            agent.on_update(res(ns("default"), workload(pod)), 4)
            await agent.reconcile_once()
            assert names(pod.cgroup) == CAPTURE
            agent.shutdown()
            assert names(pod.cgroup) == [] and programs.attachments() == []
            nursery.cancel_scope.cancel()
    finally:
        programs.detach_all()
        await agent.handoff.aclose()
        peer.close()


AGENT_SCRIPT = """
import logging, sys, trio
logging.basicConfig(level=logging.INFO)
from pathlib import Path
sys.path.insert(0, {testdir!r})
from test_na_reconcile import ns, res, we
from nodeagent.__main__ import serve

class StaticControlPlane:
    async def watch(self, on_update, task_status=trio.TASK_STATUS_IGNORED):
        on_update(res(ns("default"), we("default", "p", node="n1", netns={netns!r}, labels={{}},
                                        sa="web", address="10.0.0.2")), 1)
        print("watching", flush=True)
        await trio.sleep_forever()

trio.run(serve, "n1", StaticControlPlane(), Path({run_dir!r}), ())
"""


def test_sigterm_detaches_everything_and_exits_zero(pod, tmp_path):
    holder = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")
    assert holder.stdout.readline().strip() == "up"
    script = AGENT_SCRIPT.format(testdir=os.path.dirname(__file__), netns=pod.netns, run_dir=str(tmp_path))
    agent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=os.getcwd(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "watching"
        for _ in range(100):  # enrolled on the first reconcile after the update
            if names(pod.cgroup) == CAPTURE:
                break
            trio.run(trio.sleep, 0.05)
        assert names(pod.cgroup) == CAPTURE
        # programs attach before the enrollment finishes (in-pod rules, handoff): signal only
        # once the agent says it enrolled, or SIGTERM can land in between
        early = []
        for _ in range(200):  # bounded: a handful of lines come before it
            line = agent.stderr.readline()
            early.append(line)
            if not line or "enrolled pod default/p" in line:
                break
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
        err = "".join(early) + err
        assert agent.returncode == 0, err
        assert names(pod.cgroup) == []
        assert "enrolled pod default/p" in err and "no programs left attached" in err
        assert "ztunnel is not listening" in err  # and it kept running regardless
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate(timeout=10)


def test_cli_help_and_missing_credential(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nodeagent", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--control-plane" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "nodeagent", "--node", "n1", "--control-plane", "10.100.0.1:15012",
                          "--credential-dir", str(tmp_path), "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert str(tmp_path / "bootstrap.key") in bad.stderr and "trellis lab up" in bad.stderr
    port = subprocess.run([sys.executable, "-m", "nodeagent", "--node", "n1", "--control-plane", "nope",
                           "--credential-dir", str(tmp_path), "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert port.returncode == 2 and "HOST:PORT" in port.stderr


async def test_refused_handoff_leaves_nothing_attached_and_is_retried(programs, pod, tmp_path):
    peer = FakeZtunnelPeer(tmp_path / "ztunnel.sock")
    agent = NodeAgent("n1", programs, HandoffClient(peer.path, "n1", programs.origdst_fd))
    uid = f"default/{pod.id}"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            proc = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")
            assert proc.stdout.readline().strip() == "up"
            assert await agent.handoff.ensure_connected()
            peer.answer = {"ok": False, "error": "pod netns has no loopback"}
            agent.on_update(res(ns("default"), workload(pod)), 1)
            await agent.reconcile_once()
            assert agent.enrolled == {} and names(pod.cgroup) == []
            assert agent.handoff.pods == {}
            peer.answer = {"ok": True}
            await agent.reconcile_once()
            assert list(agent.enrolled) == [uid] and names(pod.cgroup) == CAPTURE
            nursery.cancel_scope.cancel()
    finally:
        agent.shutdown()
        await agent.handoff.aclose()
        peer.close()


async def test_a_failing_watch_is_restarted_and_the_agent_stays_up(autojump_clock, caplog):
    from nodeagent.__main__ import watch_forever

    class FlakyControlPlane:
        calls = 0

        async def watch(self, on_update):
            self.calls += 1
            raise ConnectionError("control plane at 10.100.0.1:15012 refused the connection")

    class Agent:
        enrolled, version = {}, None

        def on_update(self, resources, version):
            raise AssertionError("never called: the watch fails first")

    cp = FlakyControlPlane()
    with trio.move_on_after(10):
        await watch_forever(cp, Agent())
    assert cp.calls >= 3
    assert "refused the connection" in caplog.text and "restarting in" in caplog.text
