"""The l7guard lab as the tests drive it: clients run inside lab pods (podclient.py through
`trellis lab exec`), so the pods' ztunnels capture their traffic like an app's; the echo
apps' knobs are set from inside their pods; the waypoint's admin endpoints are read in its
network namespace."""
from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

from e2e.labctl import TRELLIS, Lab
from meshcore import admin

HERE = Path(__file__).resolve().parent
LAB_DIR = HERE / "lab"
PODCLIENT = str(HERE / "podclient.py")
WEB, POOL, GRPC = "10.96.0.10", "10.96.0.11", "10.96.0.12"


class GuardLab(Lab):
    # -- clients in pods -------------------------------------------------------------------
    def start(self, pod: str, *args: str) -> subprocess.Popen:
        """podclient.py in POD, in the background."""
        return subprocess.Popen([TRELLIS, "lab", "exec", pod, "--namespace", "default", "--",
                                 "python", PODCLIENT, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @staticmethod
    def started(proc: subprocess.Popen) -> subprocess.Popen:
        """Once a loop of podclient.py runs (its imports done: grpcio's take a second or more
        on a busy machine), so that what a test does next happens inside the loop."""
        before = []
        while (line := proc.stderr.readline()).strip() != "started":
            assert line, f"podclient ended before its loop started: {''.join(before)[-2000:]}"
            before.append(line)
        return proc

    @staticmethod
    def result(proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"podclient exited {proc.returncode}: {err[-2000:]}"
        return json.loads(out)

    def run(self, pod: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        return self.result(self.start(pod, *args), timeout)

    # -- the echo app's knobs (from inside its pod: loopback only) ---------------------------
    def knobs(self, pod: str, **values: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in values.items())
        res = self.exec(pod, "curl", "-sS", "--max-time", "5", *(("-X", "PUT") if values else ()),
                        f"http://127.0.0.1:8080/_echo/config?{query}", check=True)
        return json.loads(res.stdout)

    # -- the waypoint ------------------------------------------------------------------------
    def waypoint_pod(self) -> dict[str, Any]:
        [wp] = [p for p in self.state()["pods"] if p.get("waypoint") == "waypoint" and p["namespace"] == "default"]
        return wp

    def waypoint_admin(self, path: str) -> Any:
        return admin.get_json("127.0.0.1", 15000, path, netns=self.waypoint_pod()["netns"])

    def waypoint_metrics(self) -> str:
        status, body = admin.http_get("127.0.0.1", 15020, "/metrics", netns=self.waypoint_pod()["netns"])
        assert status == 200, body[:200]
        return body.decode()

    def waypoint_proc(self) -> dict[str, Any]:
        return self.proc("waypoint/default/" + self.waypoint_pod()["name"])

    def service_routes(self, service: str) -> dict[str, Any]:
        [entry] = [r for r in self.waypoint_admin("/routes") if r["service"] == f"default/{service}"]
        return entry

    @contextlib.contextmanager
    def applied(self, yaml_text: str):
        """Objects in the live config (`trellis lab apply -f`) for the block, then deleted."""
        self.apply(yaml_text)
        try:
            yield
        finally:
            for doc in yaml_text.split("\n---\n"):
                self.cli("lab", "delete", "-f", "/dev/stdin", input=doc, check=False)


def echo_log(lab: Lab, pod: str) -> str:
    return Path(lab.proc(f"pod/default/{pod}")["log"]).read_text(errors="replace")

