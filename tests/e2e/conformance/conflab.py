"""The Gateway API mesh conformance suite's harness, in a Trellis lab: the suite's manifests
(manifests/, copied from kubernetes-sigs/gateway-api) applied with `trellis lab apply`, its
requests made from the suite's client pods (echo-v1 of gateway-conformance-mesh, or of the
consumer namespace) by meshclient.py through the real mesh, and its expectations checked as
conformance/utils/echo/pod.go's compareRequest checks them, plus what that function leaves
out for the mesh but the spec says (the path the backend saw, a redirect's whole Location).

An expectation (`Case`) is eventually consistent, as the suite's: the cases of one test are
sent together until every one matches, or the time is up (then the last mismatches are
reported)."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from e2e.labctl import TRELLIS, Lab

HERE = Path(__file__).resolve().parent
LAB_DIR = HERE / "lab"
MANIFESTS = HERE / "manifests"
CLIENT = str(HERE / "meshclient.py")
NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"
# what the suite's pods resolve through cluster DNS (the lab has none)
HOSTS = {"echo": "10.96.0.10", "echo-v1": "10.96.0.11", "echo-v2": "10.96.0.12",
         **{f"{n}.{NS}": ip for n, ip in (("echo", "10.96.0.10"), ("echo-v1", "10.96.0.11"),
                                         ("echo-v2", "10.96.0.12"))}}
CONVERGE = 45.0


@dataclass
class Case:
    """One request and what must come of it (the suite's http.ExpectedResponse, flattened).
    path: what the client sends; seen_path: the path the backend must see (None: not checked);
    backend: the pod-name prefix of the backend (None: not checked; "" for a redirect: none)."""
    path: str = "/"
    host: str = "echo"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str = "http"
    connect: str | None = None
    status: int = 200
    backend: str | None = None
    seen_path: str | None = None
    seen_headers: dict[str, str] = field(default_factory=dict)
    absent_headers: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    absent_response_headers: list[str] = field(default_factory=list)
    location: str | None = None

    def request(self, count: int = 1) -> dict:
        return {"protocol": self.protocol, "host": self.host, "connect": self.connect, "path": self.path,
                "method": self.method, "headers": self.headers, "count": count}

    def name(self) -> str:
        extra = f" {self.headers}" if self.headers else ""
        return f"{self.protocol} {self.method} {self.host}{self.path}{extra}"


def mismatch(case: Case, got: dict) -> str | None:
    """Why `got` (one meshclient answer) does not meet `case`, or None."""
    if got.get("status") != case.status:
        return f"status {got.get('status')} ({got.get('error') or got.get('body', '')[:120]}), want {case.status}"
    if case.backend is not None and not str(got.get("pod") or "").startswith(case.backend):
        return f"answered by {got.get('pod')!r}, want {case.backend!r}"
    if case.seen_path is not None and got.get("path") != case.seen_path:
        return f"backend saw path {got.get('path')!r}, want {case.seen_path!r}"
    seen = {k.lower(): v for k, v in (got.get("request_headers") or {}).items()}
    for k, v in case.seen_headers.items():
        if seen.get(k.lower()) != v:
            return f"backend saw {k}: {seen.get(k.lower())!r}, want {v!r} (all: {seen})"
    for k in case.absent_headers:
        if k.lower() in seen:
            return f"backend saw {k}: {seen[k.lower()]!r}, want it absent"
    resp = got.get("headers") or {}
    for k, v in case.response_headers.items():   # a repeated field's values joined, as the suite does
        if ",".join(resp.get(k.lower()) or ["<absent>"]) != v:
            return f"response {k}: {resp.get(k.lower())!r}, want {v!r}"
    for k in case.absent_response_headers:
        if k.lower() in resp:
            return f"response has {k}: {resp[k.lower()]!r}, want it absent"
    if case.location is not None and resp.get("location") != [case.location]:
        return f"Location {resp.get('location')!r}, want {case.location!r}"
    return None


class ConformanceLab(Lab):
    def manifest(self, name: str) -> str:
        return (MANIFESTS / name).read_text()

    def client(self, cases: list[dict], pod: str = "echo-v1", namespace: str = NS, timeout: float = 120) -> list:
        """meshclient.py in the client pod: one answer list per case."""
        proc = subprocess.run([TRELLIS, "lab", "exec", pod, "--namespace", namespace, "--", "python", CLIENT,
                               json.dumps(HOSTS), json.dumps(cases)], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"meshclient exited {proc.returncode}: {proc.stderr[-2000:]}"
        return json.loads(proc.stdout)

    def expect(self, cases: list[Case], pod: str = "echo-v1", namespace: str = NS,
               timeout: float = CONVERGE, protocol: str = "http") -> None:
        """Every case met (eventually: config reaches the waypoint a moment after apply);
        `protocol` "h2c" sends the HTTP cases over HTTP/2 with prior knowledge instead."""
        cases = [replace(c, protocol=protocol) if c.protocol == "http" else c for c in cases]
        deadline = time.monotonic() + timeout
        while True:
            answers = self.client([c.request() for c in cases], pod, namespace)
            wrong = [f"{c.name()}: {why}" for c, [got] in zip(cases, answers) if (why := mismatch(c, got))]
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(wrong)} of {len(cases)} cases never met (from {namespace}/{pod}):\n"
                                     + "\n".join(wrong))
            time.sleep(1.0)

    def distribution(self, case: Case, count: int) -> dict[str, int]:
        """Which backend pod answered each of `count` requests (all must be `case.status`)."""
        [answers] = self.client([case.request(count)], timeout=300)
        bad = [a for a in answers if a.get("status") != case.status]
        assert not bad, f"{len(bad)} of {count} requests failed, e.g. {bad[0]}"
        seen: dict[str, int] = {}
        for a in answers:
            seen[a["pod"]] = seen.get(a["pod"], 0) + 1
        return seen

    def check_route_status(self, manifest: str) -> None:
        """Every route of `manifest`, as `trellis get` reports it: one parent entry per
        parentRef, Accepted and ResolvedRefs True (but BackendNotFound where a backendRef
        names a Service the suite does not deploy, as MeshGRPCRouteWeight's echo-v3) and
        applied by the namespace's waypoint."""
        for doc in yaml.safe_load_all(manifest):
            if not doc or doc.get("kind") not in ("HTTPRoute", "GRPCRoute"):
                continue
            meta = doc["metadata"]
            got = json.loads(self.cli("get", doc["kind"].lower(), meta["name"], "-n", meta["namespace"],
                                      "-o", "json").stdout)
            parents = got["status"]["parents"]
            assert [p["parentRef"] for p in parents] == doc["spec"]["parentRefs"], parents
            missing = any(b["name"] not in HOSTS for r in doc["spec"]["rules"] for b in r.get("backendRefs") or [])
            for p in parents:
                conds = {c["type"]: (c["status"], c["reason"]) for c in p["conditions"]}
                assert conds == {"Accepted": ("True", "Accepted"),
                                 "ResolvedRefs": ("False", "BackendNotFound") if missing else ("True", "ResolvedRefs"),
                                 "ResolvedWaypoints": ("True", "ResolvedWaypoints")}, (meta["name"], conds)

    def waypoint_routes(self) -> Any:
        return json.loads(self.cli("routes", "-n", NS, "-o", "json").stdout)


def weights_within(lab: ConformanceLab, case: Case, want: dict[str, float], tries: int = 3) -> dict[str, int]:
    """The suite's weight check (weight.TestWeightedDistributionBatch): 500 requests, each
    backend within 5 points of its share, the backends of weight 0 never; retried as the suite
    retries it (a 70/30 split misses +-5 points in ~2% of runs by chance)."""
    total, last = 500, {}
    for _ in range(tries):
        last = lab.distribution(case, total)
        active = {k for k, v in want.items() if v > 0}
        if set(last) == active and all(abs(last.get(k, 0) / total - v) <= 0.05 for k, v in want.items()):
            return last
    raise AssertionError(f"distribution {last} of {total} requests is not {want} +-0.05")
