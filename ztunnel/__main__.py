"""`python -m ztunnel --node NODE --control-plane HOST:PORT --credential-dir DIR --run-dir DIR`."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import sys
from pathlib import Path

import trio

from meshcore import malloc, ports
from meshcore.addr import parse_hostport
from meshcore.cpclient import ControlPlaneClient, load_credential
from meshcore.telemetry import configure_logging


def raise_fd_limit() -> None:
    """Each proxied connection holds at least one descriptor: take the hard limit, as Envoy
    and Istio's ztunnel do, instead of the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.getLogger("trellis.ztunnel").info("file descriptor limit %d", max(soft, hard))


MAX_DEFAULT_WORKERS = 4
WORKERS_ENV = "TRELLIS_ZTUNNEL_WORKERS"
CPUS_ENV = "TRELLIS_ZTUNNEL_WORKER_CPUS"


def cgroup_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPU limit of our cgroup (v2 `cpu.max`, "QUOTA PERIOD" or "max PERIOD"), rounded
    up; None without one. A container's limit is not in its CPU affinity."""
    try:
        quota, period = open(cpu_max).read().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def default_workers() -> int:
    """The CPUs this process may use (affinity, and a cgroup CPU limit), at most 4: past
    that one node's pods rarely keep more busy, and each worker is another ~30 MiB."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpus()
    return max(1, min(cores, limit or cores, MAX_DEFAULT_WORKERS))


def workers_arg(value: str) -> int:
    if value == "auto":
        return default_workers()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of worker processes from 1 to 64, or auto")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ztunnel",
                                description="Trellis ztunnel: the per-node L4 proxy (HBONE, mTLS, L4 authorization).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--node", required=True, help="this node's name (as in WorkloadEntry spec.node)")
    p.add_argument("--control-plane", required=True, help=f"control plane API HOST:PORT (:{ports.CONTROL_PLANE})")
    p.add_argument("--credential-dir", type=Path, help="directory with bootstrap.key, bootstrap.crt, roots.pem")
    p.add_argument("--token-file", type=Path, help="in a cluster, instead of a node certificate: the projected "
                   "ServiceAccount token the control plane checks with TokenReview (needs --ca-root-file)")
    p.add_argument("--ca-root-file", type=Path, help="with --token-file: the mesh root certificate(s), PEM")
    p.add_argument("--run-dir", required=True, type=Path, help="where ztunnel.sock lives")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--admin", default=f"127.0.0.1:{ports.ZTUNNEL_ADMIN}")
    p.add_argument("--metrics", default=f"0.0.0.0:{ports.METRICS}")
    p.add_argument("--ready", default=f"0.0.0.0:{ports.READY}")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to let connections finish on exit")
    p.add_argument("--workers", type=workers_arg, default=os.environ.get(WORKERS_ENV, "auto"),
                   help="worker processes serving connections (1: one process does everything; N > 1: a "
                   f"node-level owner and N workers; auto: the cores, at most {MAX_DEFAULT_WORKERS}); "
                   f"default ${WORKERS_ENV} or auto")
    p.add_argument("--worker-cpus", choices=("pin", "steer", "off"), default=os.environ.get(CPUS_ENV, "pin"),
                   help="with one worker per usable CPU (Linux >= 6.2): pin: worker i runs on CPU i and takes the "
                   "connections that arrive on it (SO_INCOMING_CPU); steer: takes them, runs anywhere; off: the "
                   f"kernel's hash spreads connections; default ${CPUS_ENV} or pin")
    p.add_argument("--log-level", default="INFO")
    return p


GC_YOUNG = 10_000   # container allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Call once everything is imported. ztunnel's hot path makes no reference cycles (0
    collected over 4,000 new connections), yet the cyclic GC cost ~20 us per connection on
    each side, most of it full collections walking the ~35,000 objects the imports made, and
    a young collection every 700 allocations: those objects are left out of collections
    (gc.freeze) and young collections run every GC_YOUNG allocations."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> None:
    # argparse rather than click: ztunnel runs on every node for as long as the node does,
    # and click's import alone is 3.6 MiB of resident memory (the target is <= 40 MiB idle).
    parser = _parser()
    args = parser.parse_args(argv)

    def hostport(value: str, what: str) -> tuple[str, int]:
        try:
            return parse_hostport(value, what, default_host="0.0.0.0")
        except ValueError as exc:
            parser.error(str(exc))   # exit 2, as for any other bad argument
            raise

    configure_logging(args.log_level.upper(), "%(asctime)s %(levelname)s %(name)s %(message)s")
    raise_fd_limit()
    malloc.tune()
    from .app import Config, Ztunnel
    cfg = Config(node=args.node, control_plane=hostport(args.control_plane, "--control-plane"),
                 credential_dir=args.credential_dir, run_dir=args.run_dir, trust_domain=args.trust_domain,
                 admin=hostport(args.admin, "--admin"), metrics=hostport(args.metrics, "--metrics"),
                 ready=hostport(args.ready, "--ready"), drain_timeout=args.drain_timeout)
    if (args.credential_dir is None) == (args.token_file is None) or (args.token_file and not args.ca_root_file):
        parser.error("give --credential-dir, or --token-file with --ca-root-file")
    try:
        if args.token_file:
            cp = ControlPlaneClient(cfg.control_plane, None, args.node, token_file=args.token_file,
                                    roots=args.ca_root_file.read_bytes(), trust_domain=args.trust_domain)
        else:
            cp = ControlPlaneClient(cfg.control_plane, load_credential(args.credential_dir), args.node)
        if args.workers > 1:
            from .owner import Owner
            app = Owner(cfg, cp, args.workers, args.log_level, cpu_mode=args.worker_cpus)
        else:
            app = Ztunnel(cfg, cp)
        tune_gc()
        trio.run(app.run)
    except (OSError, ValueError, ImportError) as exc:
        print(f"ztunnel: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
