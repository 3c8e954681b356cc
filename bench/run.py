"""Bring up the bench lab, run every scenario in one sitting, tear down."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from meshcore import admin, ports
from trellis.lab import procs
from trellis.lab.state import alive

from . import idleclient, l7peers, measure, peers

LAB_DIR = Path(__file__).parent / "lab"
TRELLIS = str(Path(sys.executable).parent / "trellis")
L4_PEERS = ["stunnel", "envoy-hbone"]
L7_PEERS = list(l7peers.NAMES)
ALL = ["direct", "trellis-l4", *L4_PEERS, *L7_PEERS, "trellis-l7", "churn", "idle-1k", "idle-10k", "config-push-10k"]
QUICK = ["direct", "trellis-l4", "stunnel"]
PLAIN_CLIENT, MESH_CLIENT = ("plain", "client"), ("mesh", "client")
VIP, WEB_PORT = "10.96.0.10", 8080
# trellis-l7 (bench/lab/config/l7.yaml): the waypoint-fronted VIP, its pod, the split's backends
L7_VIP, WAYPOINT_POD, L7_BACKENDS = "10.96.0.20", ("mesh", "waypoint-0"), ("web-v1", "web-v2")
# stunnel holds two descriptors per connection on each side: idle-10k needs more than 20,000
FD_LIMIT = 65536


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
    repeat: int = 1     # rounds of every chosen scenario, one after another (bench/repeat.py)
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
        self.plain: dict[str, dict] = {}
        self._tls: dict | None = None

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

    # -- peers --------------------------------------------------------------------------
    @contextmanager
    def peer(self, name: str) -> Iterator[tuple[peers.Peer, int]]:
        """Start a peer proxy, wait until it carries a request, yield it and the client-side
        HTTP port (127.0.0.1 in the plain client pod), and stop it however the body ends."""
        d = self.opts.state_dir / "peers"
        if name in L7_PEERS:
            peer, port = l7peers.start(name, d, self.plain["client"], self.plain["web"], WEB_PORT), l7peers.LOCAL[name]
        else:
            self._tls = self._tls or peers.tls_files(d)
            start = peers.start_stunnel if name == "stunnel" else peers.start_envoy
            peer = start(d, self._tls, self.plain["client"], self.plain["web"], self.plain["bulk"]["address"])
            port = peers.LOCAL[name][0]
        try:
            self._wait_ready(PLAIN_CLIENT, f"http://127.0.0.1:{port}/", peer)
            yield peer, port
        except Exception as e:
            raise RuntimeError(_peer_failure(peer, str(e))) from e
        finally:
            peers.stop(peer)

    def _wait_ready(self, pod, url: str, peer: peers.Peer, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            dead = [p.name for p in peer.procs if not alive(p)]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited before carrying a request")
            res = self.cli("lab", "exec", pod[1], "-n", pod[0], "--", "curl", "-s", "--max-time", "2", url, timeout=30)
            if res.returncode == 0 and res.stdout.strip() == "ok":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"did not carry a request to {url} within {timeout:g} s")
            time.sleep(0.3)

    # -- scenarios ----------------------------------------------------------------------
    def run(self) -> list[Row]:
        wanted = [s for s in self.opts.scenarios]
        steps = len(wanted)
        _raise_fd_limit()
        self.echo(f"[0/{steps}] lab up ({LAB_DIR}, prefix {self.opts.prefix}, state {self.opts.state_dir})")
        self.cli("lab", "down", timeout=120)
        workers = os.environ.get("TRELLIS_ZTUNNEL_WORKERS")   # the lab file says 1
        up = self.cli("lab", "up", str(LAB_DIR), *(["--ztunnel-workers", workers] if workers else []), timeout=300)
        if up.returncode != 0:
            raise RuntimeError(f"lab up failed:\n{up.stdout[-1500:]}{up.stderr[-1500:]}")
        try:
            self.plain = {name: self.pod("plain", name) for name in ("client", "web", "bulk")}
            zt = self.pids("ztunnel/")
            for rnd in range(1, self.opts.repeat + 1):
                first = len(self.rows)
                for i, name in enumerate(wanted, 1):
                    self.echo(f"[{i}/{steps}{f', round {rnd}/{self.opts.repeat}' if self.opts.repeat > 1 else ''}] {name}")
                    try:
                        self.scenario(name, zt)
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                        self.failed(name, e)   # one broken scenario must not cost the others' figures
                if self.opts.repeat > 1:   # each row knows its round: ratios are taken within one
                    for row in self.rows[first:]:
                        row.extra["round"] = rnd
        finally:
            self.echo("lab down")
            self.cli("lab", "down", timeout=120)
        return self.rows

    def failed(self, scenario: str, e: BaseException) -> None:
        """Record a scenario (or one peer's row of it) that could not be measured, and go on."""
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = why.split(" Traceback (most recent call last)")[0].rstrip(": ")   # the reason, not the client's stack
        self.echo(f"  {scenario}: FAILED: {why}")
        self.rows.append(Row(scenario, "-", "-", extra={"failed": why[:300]}))

    def scenario(self, name: str, zt: list[int]) -> None:
        if name == "direct":
            self.rows.append(self.request_response(
                "direct", "none (mesh off)", "-", PLAIN_CLIENT, f"http://{self.plain['web']['address']}:{WEB_PORT}/",
                (self.plain["bulk"]["address"], peers.BULK_PORT), []))
        elif name == "trellis-l4":
            self.rows.append(self.request_response(
                "trellis-l4", "ztunnel x2 (HBONE)", "1 process each", MESH_CLIENT, f"http://{VIP}/",
                ("10.96.0.11", peers.BULK_PORT), zt))
        elif name in L4_PEERS:
            with self.peer(name) as (peer, port):
                self.rows.append(self.request_response(
                    name, name.split("-")[0] + " pair", peer.workers, PLAIN_CLIENT, f"http://127.0.0.1:{port}/",
                    ("127.0.0.1", peers.LOCAL[name][1]), _pids(peer)))
        elif name in L7_PEERS:  # HTTP/1.1 request/response only: bulk transfer is an L4 matter
            with self.peer(name) as (peer, port):
                self.rows.append(self.request_response(
                    name, l7peers.PROXY[name], peer.workers, PLAIN_CLIENT, f"http://127.0.0.1:{port}/", None,
                    _pids(peer)))
        elif name == "trellis-l7":
            self.trellis_l7(zt)
        elif name == "churn":
            self.churn(zt)
        elif name.startswith("idle-"):
            self.idle(int(name.split("-")[1].replace("k", "000")), zt)
        elif name.startswith("config-push-"):
            self.config_push(int(name.rsplit("-", 1)[1].replace("k", "000")), zt)
        else:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(ALL)})")

    def trellis_l7(self, zt: list[int]) -> None:
        """Through the mesh and the waypoint: the same wrk, to the waypoint-fronted VIP. The
        waypoint's own requests counters tell the split that really happened."""
        wp = self._wait_through(MESH_CLIENT, f"http://{L7_VIP}/", timeout=90)
        before = self._split()
        rss_waypoint = sum(measure.rss_kib(p) for p in measure.tree(wp[0])) / 1024
        row = self.request_response("trellis-l7", "ztunnel x2 + waypoint (HBONE)", "1 process each", MESH_CLIENT,
                                    f"http://{L7_VIP}/", None, zt + wp)
        after = self._split()
        v1, v2 = (after[b] - before[b] for b in L7_BACKENDS)
        row.extra.update(waypoint_rss_idle_mib=rss_waypoint, requests=int(v1 + v2),
                         v2_share=v2 / (v1 + v2) if v1 + v2 else None)
        self.rows.append(row)

    def _split(self) -> dict[str, float]:
        """Requests the waypoint sent to each backend Service so far (its /metrics)."""
        text = self.exec(WAYPOINT_POD, "curl", "-s", "--max-time", "10", f"http://127.0.0.1:{ports.METRICS}/metrics")
        return {b: measure.prometheus_sum(text, "istio_requests_total", destination_service_name=b) for b in L7_BACKENDS}

    def _wait_through(self, pod, url: str, timeout: float) -> list[int]:
        """Until the waypoint pod runs (the lab's supervisor starts it after `lab up`) and a
        request through `url` is answered; its pids."""
        name = f"waypoint/{WAYPOINT_POD[0]}/{WAYPOINT_POD[1]}"
        deadline = time.monotonic() + timeout
        while True:
            wp = self.pids(name)
            res = self.cli("lab", "exec", pod[1], "-n", pod[0], "--", "curl", "-s", "--max-time", "2", url, timeout=30)
            if wp and res.returncode == 0 and res.stdout.strip() == "ok":
                return wp
            if time.monotonic() > deadline:
                raise RuntimeError(f"no waypoint pod {name} answering through {url} within {timeout:g} s "
                                   f"(bench/lab/config/l7.yaml; logs in {self.opts.state_dir}): "
                                   f"{res.stdout[-200:]}{res.stderr[-200:]}")
            time.sleep(0.5)

    def churn(self, zt: list[int]) -> None:
        """A new connection per request: the handshake and tunnel setup cost."""
        self._churn_row("direct", "-", PLAIN_CLIENT, f"http://{self.plain['web']['address']}:{WEB_PORT}/", [])
        self._churn_row("trellis-l4", "1 process each", MESH_CLIENT, f"http://{VIP}/", zt)
        for name in L4_PEERS:
            try:
                with self.peer(name) as (peer, port):
                    self._churn_row(name, peer.workers, PLAIN_CLIENT, f"http://127.0.0.1:{port}/", _pids(peer))
            except RuntimeError as e:
                self.failed(f"churn/{name}", e)

    def _churn_row(self, name: str, workers: str, pod, url: str, pids: list[int]) -> None:
        self.echo(f"  churn/{name}: wrk -H 'Connection: close' -> {url}")
        r, cpu, _, _ = self.wrk(pod, url, pids, "-H", "Connection: close")
        self.rows.append(Row(f"churn/{name}", "new connection per request", workers, r.rps, r.p50_ms, r.p99_ms,
                             r.max_ms, r.errors, cpu_ms_per_req=(cpu * 1000 / r.requests if pids and r.requests else None)))

    def idle(self, n: int, zt: list[int]) -> None:
        """Hold n idle connections through the mesh and through each L4 peer pair; memory per
        connection summed over both sides (two ztunnels, or a peer's client and server)."""
        self._idle_row(f"idle-{n}", "ztunnel x2", "1 process each", MESH_CLIENT, (VIP, 80), ("mesh", "web"), zt, n)
        for name in L4_PEERS:
            try:
                with self.peer(name) as (peer, port):
                    self._idle_row(f"idle-{n}/{name}", name.split("-")[0] + " pair", peer.workers, PLAIN_CLIENT,
                                   ("127.0.0.1", port), ("plain", "web"), _pids(peer), n)
            except RuntimeError as e:   # stunnel's thread per connection may not reach 10,000
                self.failed(f"idle-{n}/{name}", e)

    def _idle_row(self, scenario: str, proxy: str, workers: str, pod, dest: tuple[str, int], server_pod,
                  pids: list[int], n: int) -> None:
        _, rss0 = self._usage(pids)
        already = self._established(server_pod)   # e.g. a waypoint's kept-alive connections to the app
        deadline = time.monotonic() + 60 + n / 100
        proc = subprocess.Popen([TRELLIS, "lab", "exec", pod[1], "-n", pod[0], "--", "python3", "-c", idleclient.script(n, *dest)],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            line = idleclient.readline(proc, deadline)
            if line != "ready":
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, so that stderr reaches EOF
                raise RuntimeError(f"{scenario}: the client could not open {n} connections to {dest[0]}:{dest[1]} "
                                   f"in time: {line} {proc.stderr.read()[-500:]}")
            # the proxies accept at once and tunnel behind: count them arrived at the app
            while (seen := self._established(server_pod) - already) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{scenario}: only {seen} of {n} connections reached the app "
                                       f"in {server_pod[0]}/{server_pod[1]} in time")
                time.sleep(0.5)
            time.sleep(1.0)
            _, rss1 = self._usage(pids)
        finally:
            idleclient.end(proc)
        per_conn_kib = (rss1 - rss0) * 1024 / n
        self.echo(f"  {scenario}: {proxy} {rss0:.1f} MiB -> {rss1:.1f} MiB, {per_conn_kib:.1f} KiB per connection")
        self.rows.append(Row(scenario, proxy, workers, rss_idle_mib=rss0, rss_load_mib=rss1,
                             extra={"kib_per_connection": per_conn_kib, "connections": n}))

    def _established(self, pod) -> int:
        out = self.exec(pod, "ss", "-Htn", "state", "established", f"( sport = :{WEB_PORT} )", timeout=60)
        return len([line for line in out.splitlines() if line.strip()])

    def config_push(self, n: int, zt: list[int]) -> None:
        """n WorkloadEntries written at once: seconds until every ztunnel has applied them."""
        cfg = self.opts.state_dir / "config"
        cp_before = admin.get_json("127.0.0.1", ports.CONTROL_PLANE_ADMIN, "/healthz", netns=f"{self.opts.prefix}-fabric")["version"]
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
                        v = admin.get_json("127.0.0.1", ports.ZTUNNEL_ADMIN, "/healthz", netns=f"{self.opts.prefix}-{node}", timeout=5)["version"]
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


def _pids(peer: peers.Peer) -> list[int]:
    return [p.pid for p in peer.procs]


def _peer_failure(peer: peers.Peer, what: str) -> str:
    logs = "\n".join(f"--- {p.name}: {p.log}\n{procs.tail(p.log)}" for p in peer.procs)
    return f"{peer.name}: {what}\n{logs}"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise the hard limit; peers and lab processes inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FD_LIMIT), max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        pass


def rows_to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2)
