"""Bring up the bench lab, run every scenario in one sitting, tear down."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from meshcore import admin

from . import measure, peers

LAB_DIR = Path(__file__).parent / "lab"
TRELLIS = str(Path(sys.executable).parent / "trellis")
ALL = ["direct", "trellis-l4", "stunnel", "envoy-hbone", "churn", "idle-1k", "idle-10k", "config-push-10k"]
QUICK = ["direct", "trellis-l4", "stunnel"]


def lab_prefix() -> str:
    """Kernel names of the bench lab start with this, so two benches can run side by side."""
    return os.environ.get("TRELLIS_BENCH_PREFIX") or "tbench"


def lab_dir() -> Path:
    return Path(os.environ.get("TRELLIS_BENCH_DIR") or "/run/trellis/bench")


@dataclass
class Options:
    duration: float = 10.0
    connections: int = 16
    scenarios: list[str] = field(default_factory=lambda: list(ALL))
    bulk: bool = True
    quick: bool = False
    prefix: str = field(default_factory=lab_prefix)
    state_dir: Path = field(default_factory=lab_dir)


@dataclass
class Row:
    scenario: str
    proxy: str
    workers: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int | None = None
    gbps_1: float | None = None
    gbps_4: float | None = None
    cpu_ms_per_req: float | None = None
    cpu_s_per_gb: float | None = None
    rss_idle_mib: float | None = None
    rss_load_mib: float | None = None
    extra: dict = field(default_factory=dict)


class Bench:
    def __init__(self, opts: Options, echo: Callable[[str], None] = print):
        self.opts, self.echo = opts, echo
        self.env = dict(os.environ, TRELLIS_LAB_PREFIX=opts.prefix, TRELLIS_LAB_DIR=str(opts.state_dir))
        self.rows: list[Row] = []

    # -- the lab ------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([TRELLIS, *args], env=self.env, capture_output=True, text=True, timeout=timeout, input=input)

    def exec(self, pod: tuple[str, str], *cmd: str, timeout: float = 120) -> str:
        ns, name = pod
        res = self.cli("lab", "exec", name, "-n", ns, "--", *cmd, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {ns}/{name} exited {res.returncode}: {res.stderr[-400:]}{res.stdout[-400:]}")
        return res.stdout

    def state(self) -> dict:
        return json.loads((self.opts.state_dir / "lab.json").read_text())

    def pod(self, ns: str, name: str) -> dict:
        return next(p for p in self.state()["pods"] if (p["namespace"], p["name"]) == (ns, name))

    def pids(self, prefix: str) -> list[int]:
        return [p["pid"] for p in self.state()["procs"] if p["name"].startswith(prefix)]

    # -- measurement --------------------------------------------------------------------
    def _usage(self, pids: list[int]) -> tuple[float, float]:
        all_pids = [q for p in pids for q in measure.tree(p)]
        cpu = sum(measure.cpu_seconds(p) for p in all_pids)
        return cpu, sum(measure.rss_kib(p) for p in all_pids) / 1024

    def wrk(self, pod, url: str, pids: list[int], *extra: str) -> tuple[measure.WrkResult, float, float, float]:
        cpu0, rss0 = self._usage(pids)
        out = self.exec(pod, "wrk", "--latency", "-t1", f"-c{self.opts.connections}", f"-d{self.opts.duration:g}s",
                        *extra, url, timeout=self.opts.duration + 60)
        cpu1, rss1 = self._usage(pids)
        return measure.parse_wrk(out), cpu1 - cpu0, rss0, rss1

    def iperf(self, pod, host: str, port: int, streams: int, pids: list[int]) -> tuple[float, float]:
        cpu0, _ = self._usage(pids)
        dur = max(1, int(self.opts.duration / 2))
        out = self.exec(pod, "iperf3", "-c", host, "-p", str(port), "-t", str(dur), "-P", str(streams), "-J",
                        timeout=dur + 60)
        gbps = measure.parse_iperf3(out)
        cpu1, _ = self._usage(pids)
        gb = gbps * dur / 8
        return gbps, (cpu1 - cpu0) / gb if gb else 0.0

    def request_response(self, name: str, proxy: str, workers: str, pod, url: str, bulk: tuple[str, int] | None,
                         pids: list[int]) -> Row:
        self.echo(f"  {name}: wrk -c{self.opts.connections} {self.opts.duration:g}s -> {url}")
        r, cpu, rss0, rss1 = self.wrk(pod, url, pids)
        row = Row(name, proxy, workers, r.rps, r.p50_ms, r.p99_ms, r.max_ms, r.errors,
                  cpu_ms_per_req=(cpu * 1000 / r.requests if pids and r.requests else None),
                  rss_idle_mib=rss0 if pids else None, rss_load_mib=rss1 if pids else None)
        if bulk and self.opts.bulk:
            self.echo(f"  {name}: iperf3 -P1 and -P4 -> {bulk[0]}:{bulk[1]}")
            row.gbps_1, cpu_gb = self.iperf(pod, *bulk, 1, pids)
            row.gbps_4, _ = self.iperf(pod, *bulk, 4, pids)
            row.cpu_s_per_gb = cpu_gb if pids else None
        return row

    # -- scenarios ----------------------------------------------------------------------
    def run(self) -> list[Row]:
        wanted = [s for s in self.opts.scenarios]
        steps = len(wanted)
        self.echo(f"[0/{steps}] lab up ({LAB_DIR})")
        self.cli("lab", "down", timeout=120)
        up = self.cli("lab", "up", str(LAB_DIR), timeout=300)
        if up.returncode != 0:
            raise RuntimeError(f"lab up failed:\n{up.stdout[-1500:]}{up.stderr[-1500:]}")
        started: list[peers.Peer] = []
        try:
            plain_web, plain_bulk = self.pod("plain", "web"), self.pod("plain", "bulk")
            plain_client = self.pod("plain", "client")
            zt = self.pids("ztunnel/")
            tls = None
            for i, name in enumerate(wanted, 1):
                self.echo(f"[{i}/{steps}] {name}")
                if name == "direct":
                    self.rows.append(self.request_response(
                        "direct", "none (mesh off)", "-", ("plain", "client"), f"http://{plain_web['address']}:8080/",
                        (plain_bulk["address"], 5201), []))
                elif name == "trellis-l4":
                    self.rows.append(self.request_response(
                        "trellis-l4", "ztunnel x2 (HBONE)", "1 process each", ("mesh", "client"),
                        "http://10.96.0.10/", ("10.96.0.11", 5201), zt))
                elif name in ("stunnel", "envoy-hbone"):
                    tls = tls or peers.tls_files(self.opts.state_dir / "peers")
                    start = peers.start_stunnel if name == "stunnel" else peers.start_envoy
                    peer = start(self.opts.state_dir / "peers", tls, plain_client, plain_web, plain_bulk["address"])
                    started.append(peer)
                    http_port, bulk_port = peers.LOCAL[name]
                    self._wait_ready(("plain", "client"), f"http://127.0.0.1:{http_port}/", peer)
                    self.rows.append(self.request_response(
                        name, name.split("-")[0] + " pair", peer.workers, ("plain", "client"),
                        f"http://127.0.0.1:{http_port}/", ("127.0.0.1", bulk_port), [p.pid for p in peer.procs]))
                    peers.stop(peer)
                    started.remove(peer)
                elif name == "churn":
                    self.churn(zt, plain_web)
                elif name.startswith("idle-"):
                    self.idle(int(name.split("-")[1].replace("k", "000")), zt)
                elif name.startswith("config-push-"):
                    self.config_push(int(name.rsplit("-", 1)[1].replace("k", "000")), zt)
                else:
                    raise ValueError(f"unknown scenario {name!r} (known: {', '.join(ALL)})")
        finally:
            for peer in started:
                peers.stop(peer)
            self.echo("lab down")
            self.cli("lab", "down", timeout=120)
        return self.rows

    def _wait_ready(self, pod, url: str, peer: peers.Peer, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            res = self.cli("lab", "exec", pod[1], "-n", pod[0], "--", "curl", "-s", "--max-time", "2", url, timeout=30)
            if res.returncode == 0 and res.stdout.strip() == "ok":
                return
            if time.monotonic() > deadline:
                logs = "\n".join(Path(p.log).read_text()[-600:] for p in peer.procs if Path(p.log).exists())
                raise RuntimeError(f"{peer.name} did not carry a request within {timeout}s:\n{logs}")
            time.sleep(0.3)

    def churn(self, zt: list[int], plain_web: dict) -> None:
        """A new connection per request: the handshake and tunnel setup cost."""
        for name, pod, url, pids in (("direct", ("plain", "client"), f"http://{plain_web['address']}:8080/", []),
                                     ("trellis-l4", ("mesh", "client"), "http://10.96.0.10/", zt)):
            self.echo(f"  churn/{name}: wrk -H 'Connection: close'")
            r, cpu, rss0, rss1 = self.wrk(pod, url, pids, "-H", "Connection: close")
            self.rows.append(Row(f"churn/{name}", "new connection per request", "-", r.rps, r.p50_ms, r.p99_ms,
                                 r.max_ms, r.errors, cpu_ms_per_req=(cpu * 1000 / r.requests if pids and r.requests else None)))

    def idle(self, n: int, zt: list[int]) -> None:
        """Hold n idle connections through the mesh; memory per connection at both ztunnels."""
        script = ("import socket,sys,resource\n"
                  "resource.setrlimit(resource.RLIMIT_NOFILE,(resource.getrlimit(resource.RLIMIT_NOFILE)[1],)*2)\n"
                  f"socks=[]\n"
                  f"for i in range({n}):\n"
                  "    socks.append(socket.create_connection(('10.96.0.10',80),timeout=10))\n"
                  "s=socks[-1]; s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); assert b'200' in s.recv(1000)\n"
                  "print('ready',flush=True); sys.stdin.read()\n")
        _, rss0 = self._usage(zt)
        proc = subprocess.Popen([TRELLIS, "lab", "exec", "client", "-n", "mesh", "--", "python3", "-c", script],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"idle-{n}: the client could not open {n} connections: {proc.stderr.read()[-500:]}")
            time.sleep(1.0)
            _, rss1 = self._usage(zt)
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
        per_conn_kib = (rss1 - rss0) * 1024 / n
        self.echo(f"  idle-{n}: ztunnels {rss0:.1f} MiB -> {rss1:.1f} MiB, {per_conn_kib:.1f} KiB per connection")
        self.rows.append(Row(f"idle-{n}", "ztunnel x2", "1 process each", rss_idle_mib=rss0, rss_load_mib=rss1,
                             extra={"kib_per_connection": per_conn_kib, "connections": n}))

    def config_push(self, n: int, zt: list[int]) -> None:
        """n WorkloadEntries written at once: seconds until every ztunnel has applied them."""
        cfg = self.opts.state_dir / "config"
        cp_before = admin.get_json("127.0.0.1", 15010, "/healthz", netns=f"{self.opts.prefix}-fabric")["version"]
        docs = [f"apiVersion: trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: push}}\n"
                f"spec: {{address: 10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}, node: elsewhere, "
                f"serviceAccount: push, labels: {{app: push}}}}\n" for i in range(n)]
        tmp = cfg / ".bench-push.tmp"
        tmp.write_text("---\n".join(docs))
        t0 = time.monotonic()
        tmp.rename(cfg / "bench-push.yaml")
        nodes = [p["name"].split("/")[1] for p in self.state()["procs"] if p["name"].startswith("ztunnel/")]
        done: dict[str, float] = {}
        while len(done) < len(nodes) and time.monotonic() - t0 < 300:
            for node in nodes:
                if node not in done:
                    try:
                        v = admin.get_json("127.0.0.1", 15000, "/healthz", netns=f"{self.opts.prefix}-{node}", timeout=5)["version"]
                    except (OSError, RuntimeError, ValueError):
                        continue
                    if v is not None and v > cp_before:
                        done[node] = time.monotonic() - t0
            time.sleep(0.05)
        if len(done) < len(nodes):
            raise RuntimeError(f"config-push-{n}: not applied everywhere within 300 s ({done})")
        _, rss = self._usage(zt)
        seconds = max(done.values())
        self.echo(f"  config-push-{n}: applied by every ztunnel after {seconds:.2f} s; ztunnels now {rss:.1f} MiB")
        self.rows.append(Row(f"config-push-{n}", "control plane -> ztunnel x2", "-", rss_load_mib=rss,
                             extra={"seconds_to_apply": seconds, "workloads": n}))
        (cfg / "bench-push.yaml").unlink()


def rows_to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2)
