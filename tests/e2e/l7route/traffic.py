"""What the L7 routing tests share: the in-pod load client (client.py, run with the pod's
python3 through `trellis lab exec`), the waypoint's admin and metrics read in its netns,
the routes it applies, what a backend really received (its own log), and the binomial
tolerance of a weighted split."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
from pathlib import Path

import yaml

from e2e.labctl import TRELLIS, metric_value, wait_until
from meshcore import admin

CLIENT = str(Path(__file__).resolve().parent / "client.py")
SIGMAS = 5   # a correct split fails a 5-sigma check about once in 1.7 million runs


def client_argv(host: str, out: Path, *, cases: list[dict] | None = None, **opts) -> list[str]:
    argv = [TRELLIS, "lab", "exec", "sleep", "--", "python3", CLIENT, "--host", host, "--out", str(out)]
    if cases is not None:
        argv += ["--cases", json.dumps(cases)]
    for k, v in opts.items():
        for one in (v if isinstance(v, list) else [v]):
            argv += [f"--{k.replace('_', '-')}", str(one)]
    return argv


def records(out: Path) -> list[dict]:
    if not out.exists():
        return []
    # only whole lines: the client may be half way through writing the last one
    return [json.loads(line) for line in out.read_text().split("\n")[:-1]]


def run(lab, out: Path, host: str, *, timeout: float = 90, **opts) -> list[dict]:
    """Run the client to the end; its records, in request order."""
    proc = subprocess.run(client_argv(host, out, **opts), env=lab.env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"the client failed: {proc.stderr[-2000:]}"
    return sorted(records(out), key=lambda r: r["i"])


def start(lab, out: Path, host: str, **opts) -> subprocess.Popen:
    return subprocess.Popen(client_argv(host, out, **opts), env=lab.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def failures(recs: list[dict], ok: int = 200) -> list[dict]:
    return [r for r in recs if r["error"] or r["status"] != ok]


def binomial_bounds(n: int, p: float, sigmas: float = SIGMAS) -> tuple[float, float]:
    """Where the count of successes in n draws of probability p lands, within `sigmas`."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def waypoint_pod(lab) -> dict:
    [wp] = [p for p in lab.state()["pods"] if p.get("waypoint") == "waypoint" and p["namespace"] == "default"]
    return wp


def waypoint_metrics(lab) -> str:
    status, body = admin.http_get("127.0.0.1", 15020, "/metrics", netns=waypoint_pod(lab)["netns"])
    assert status == 200, body[:200]
    return body.decode()


def waypoint_metric(lab, name: str, **labels: str) -> float:
    return metric_value(waypoint_metrics(lab), name, **labels)


def service_routes(lab, service: str) -> list[dict]:
    """The rows of `trellis routes -o json` for default/<service>: one per rule of each route
    the waypoint applies there ({parent, route, rule, matches, backends, timeouts, retry, ...})."""
    rows = json.loads(lab.cli("routes", "-n", "default", "-o", "json").stdout)
    return [r for r in rows if r["parent"].startswith(f"default/{service}:") and r["route"]]


def rule_weights(rows: list[dict], route: str) -> list[list[int]]:
    """Per rule of HTTPRoute default/<route>: its backends' weights as the waypoint applies them."""
    return [[b["weight"] for b in r["backends"]]
            for r in sorted((r for r in rows if r["route"] == f"default/{route}"), key=lambda r: r["rule"])]


def apply_and_wait(lab, yaml_text: str, service: str, check, what: str, timeout: float = 30) -> None:
    """Write the objects into the lab's config dir (as `trellis lab apply -f` does for a user),
    then wait until the waypoint's /routes for <service> satisfies `check`."""
    lab.apply(yaml_text)
    wait_until(lambda: check(service_routes(lab, service)), what, timeout=timeout)


@contextlib.contextmanager
def applied(lab, yaml_text: str, service: str, check, what: str):
    """The objects in the config for the duration (applied and seen at the waypoint), then
    removed again, and their routes gone from the waypoint, so the next test starts clean."""
    docs = [d for d in yaml.safe_load_all(yaml_text) if d]
    routes = {f"default/{d['metadata']['name']}" for d in docs if d["kind"].endswith("Route")}
    try:
        apply_and_wait(lab, yaml_text, service, check, what)
        yield
    finally:
        for d in docs:
            lab.cli("lab", "delete", "-f", "/dev/stdin", input=yaml.safe_dump(d), check=False)
        wait_until(lambda: not routes & {r["route"] for r in service_routes(lab, service)},
                   f"the routes of {what} to go", timeout=30)


def wait_records(out: Path, proc: subprocess.Popen, pred, what: str, timeout: float = 60) -> list[dict]:
    """Poll a running client's records until `pred(records)` holds (fail at once if it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = records(out)
        if pred(recs):
            return recs
        if proc.poll() is not None:
            raise AssertionError(f"the client exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; {len(records(out))} requests done")


def received(lab, pod: str, marker: str) -> int:
    """Requests the echo pod logged (one stderr line each) whose path contains `marker`."""
    log = lab.state_dir / "pods" / f"default_{pod}.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines() if marker in line)
