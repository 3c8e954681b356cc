"""Driving a real lab from tests: the `trellis` CLI as a user runs it, and the components'
admin endpoints read inside their network namespaces."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from meshcore import admin

TRELLIS = str(Path(sys.executable).parent / "trellis")


def lab_env(state_dir: str, prefix: str) -> dict[str, str]:
    return dict(os.environ, TRELLIS_LAB_DIR=state_dir, TRELLIS_LAB_PREFIX=prefix)


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def running(lab_dir: Path, state_dir: str, prefix: str, cls: type | None = None) -> Iterator["Lab"]:
    """A lab up for the duration (after removing what a run that died half way left), then down."""
    lab = (cls or Lab)(lab_dir, state_dir, prefix)
    lab.down()
    try:
        lab.up()
        yield lab
    finally:
        res = lab.down()
        assert res.returncode == 0, res.stderr


class Lab:
    def __init__(self, lab_dir: Path, state_dir: str, prefix: str):
        self.lab_dir, self.state_dir, self.prefix = lab_dir, Path(state_dir), prefix
        self.env = lab_env(state_dir, prefix)

    # -- CLI ---------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([TRELLIS, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"trellis {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def apply_waypoint(self, namespace: str, timeout: float) -> None:
        """`trellis waypoint apply -n NS --enroll-namespace`, then wait (bounded by `timeout`)
        until `waypoint status` reports a ready replica, as a user would."""
        self.cli("waypoint", "apply", "-n", namespace, "--enroll-namespace")
        wait_until(lambda: json.loads(self.cli("waypoint", "status", "-n", namespace, "-o", "json").stdout)[0]
                   ["ready"] >= 1, f"{namespace}/waypoint ready", timeout=timeout)

    def up(self) -> None:
        self.cli("lab", "up", str(self.lab_dir), timeout=240)

    def down(self) -> subprocess.CompletedProcess:
        return self.cli("lab", "down", timeout=120, check=False)

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "lab.json").read_text())

    def exec(self, pod: str, *cmd: str, namespace: str = "default", timeout: float = 30,
             check: bool = False) -> subprocess.CompletedProcess:
        return self.cli("lab", "exec", pod, "--namespace", namespace, "--", *cmd, timeout=timeout, check=check)

    def curl(self, pod: str, url: str, *extra: str, namespace: str = "default", max_time: float = 5) -> subprocess.CompletedProcess:
        return self.exec(pod, "curl", "-sS", "--max-time", str(max_time), *extra, url,
                         namespace=namespace, timeout=max_time + 20)

    def apply(self, yaml_text: str) -> None:
        self._with_file("apply", yaml_text)

    def delete(self, yaml_text: str) -> None:
        self._with_file("delete", yaml_text)

    def _with_file(self, verb: str, yaml_text: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(yaml_text)
        try:
            self.cli("lab", verb, "-f", f.name)
        finally:
            os.unlink(f.name)

    # -- topology ------------------------------------------------------------------------
    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        for p in self.state()["pods"]:
            if p["name"] == name and p["namespace"] == namespace:
                return p
        raise KeyError(f"no pod {namespace}/{name} in the lab")

    def ip(self, name: str, namespace: str = "default") -> str:
        return self.pod(name, namespace)["address"]

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def fabric_netns(self) -> str:
        return f"{self.prefix}-fabric"

    def proc(self, name: str) -> dict[str, Any]:
        for p in self.state()["procs"]:
            if p["name"] == name:
                return p
        raise KeyError(name)

    # -- admin endpoints -------------------------------------------------------------------
    def ztunnel(self, node: str, path: str) -> Any:
        return admin.get_json("127.0.0.1", 15000, path, netns=self.node_netns(node))

    def metrics(self, node: str) -> str:
        status, body = admin.http_get("127.0.0.1", 15020, "/metrics", netns=self.node_netns(node))
        assert status == 200, body[:200]
        return body.decode()

    def serving(self, node: str) -> set[str]:
        pods = self.ztunnel(node, "/pods")
        items = pods.get("pods", []) if isinstance(pods, dict) else pods
        return {p["uid"] for p in items if p.get("state") == "serving"}

    def wait_enrolled(self, node: str, uid: str, enrolled: bool = True, timeout: float = 30) -> None:
        wait_until(lambda: (uid in self.serving(node)) == enrolled,
                   f"{uid} {'enrolled' if enrolled else 'unenrolled'} at ztunnel/{node}", timeout)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in body for k, v in labels.items()):
            total += float(value)
    return total


class Capture:
    """tcpdump on the fabric bridge, where traffic between nodes crosses: shows what is
    encrypted and what is not."""

    def __init__(self, lab, path):
        self.path = path
        self.out = open(path, "wb")
        # --immediate-mode: libpcap's TPACKET_V3 ring otherwise hands packets over only when a
        # block times out, and tcpdump drops what is still pending when it is terminated
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.fabric_netns(), "tcpdump", "--immediate-mode", "-i", "trellis0",
             "-U", "-s", "0", "-w", "-", "tcp"], stdout=self.out, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once the socket is ready
        line = self.proc.stderr.readline().decode()
        assert "listening" in line, line

    def stop(self) -> bytes:
        time.sleep(1.0)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.out.close()
        return self.path.read_bytes()

    def summary(self) -> str:
        return subprocess.run(["tcpdump", "-nn", "-r", str(self.path)], capture_output=True, text=True).stdout
