"""Process-level behaviour: CLI errors as advice, SIGTERM drains and returns."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from ztunnel.app import Config, Ztunnel

from test_app import StaticControlPlane, http

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def test_missing_credential_is_advice_and_exit_1(tmp_path):
    r = subprocess.run([PY, "-m", "ztunnel", "--node", "n1", "--control-plane", "127.0.0.1:15012",
                        "--credential-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1
    assert "bootstrap.key" in r.stderr and "trellis lab up" in r.stderr


def test_node_credential_or_token_exactly_one(tmp_path):
    base = [PY, "-m", "ztunnel", "--node", "n1", "--control-plane", "127.0.0.1:15012", "--run-dir", str(tmp_path)]
    for extra in ([], ["--token-file", str(tmp_path / "t")],
                  ["--token-file", str(tmp_path / "t"), "--credential-dir", str(tmp_path), "--ca-root-file", "r"]):
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 2 and "give --credential-dir, or --token-file with --ca-root-file" in r.stderr
    r = subprocess.run(base + ["--token-file", str(tmp_path / "t"), "--ca-root-file", str(tmp_path / "none.pem")],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1 and "none.pem" in r.stderr  # the missing root file is named


def test_bad_control_plane_address(tmp_path):
    r = subprocess.run([PY, "-m", "ztunnel", "--node", "n1", "--control-plane", "nope",
                        "--credential-dir", str(tmp_path), "--run-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


async def test_port_in_use_fails_at_startup(tmp_path):
    blocker = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = blocker.socket.getsockname()[1]
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=tmp_path, run_dir=tmp_path,
                 admin=("127.0.0.1", 0), metrics=("127.0.0.1", port), ready=("127.0.0.1", 0))
    try:
        zt = Ztunnel(cfg, StaticControlPlane([]))
        try:
            await zt.run(handle_signals=False)
        except OSError as exc:
            assert f"127.0.0.1:{port}" in str(exc) and "another instance" in str(exc)
        else:
            raise AssertionError("ztunnel started although its metrics port is taken")
    finally:
        await blocker.aclose()


async def test_sigterm_stops_accepting_and_exits(tmp_path):
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=tmp_path, run_dir=tmp_path,
                 admin=("127.0.0.1", 0), metrics=("127.0.0.1", 0), ready=("127.0.0.1", 0), drain_timeout=1)
    zt = Ztunnel(cfg, StaticControlPlane([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            await n.start(lambda task_status: zt.run(task_status=task_status))
            ready = zt.listeners["ready"].socket.getsockname()[1]
            assert (await http(ready, "/healthz/ready"))[0] == 200
            os.kill(os.getpid(), signal.SIGTERM)
    assert zt.draining
    assert not (tmp_path / "ztunnel.sock").exists()
    try:
        await trio.open_tcp_stream("127.0.0.1", ready)
    except OSError:
        pass
    else:
        raise AssertionError("readiness still accepting after SIGTERM")


class CrashingWatch(StaticControlPlane):
    def __init__(self):
        super().__init__([])
        self.calls = 0

    async def watch(self, on_update, *, task_status=trio.TASK_STATUS_IGNORED):
        self.calls += 1
        if self.calls == 1:
            on_update({"bad": object()}, 3)  # not a resource: rejected, the process stays up
            raise ConnectionResetError("control plane went away")
        on_update({}, 4)
        await trio.sleep_forever()


async def test_watch_failures_keep_the_process_up(tmp_path, autojump_clock):
    cfg = Config(node="n1", control_plane=("127.0.0.1", 1), credential_dir=tmp_path, run_dir=tmp_path,
                 admin=("127.0.0.1", 0), metrics=("127.0.0.1", 0), ready=("127.0.0.1", 0))
    cp = CrashingWatch()
    zt = Ztunnel(cfg, cp)
    async with trio.open_nursery() as n:
        await n.start(lambda task_status: zt.run(handle_signals=False, task_status=task_status))
        assert zt.state.version is None
        await trio.sleep(5)
        assert cp.calls == 2 and zt.state.version == 4
        n.cancel_scope.cancel()
