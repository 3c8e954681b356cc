"""`python -m ztunnel --node NODE --control-plane HOST:PORT --credential-dir DIR --run-dir DIR`."""
from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

import click
import trio

from meshcore.addr import parse_hostport
from meshcore.cpclient import ControlPlaneClient, load_credential


def raise_fd_limit() -> None:
    """Each proxied connection holds at least one descriptor: take the hard limit, as Envoy
    and Istio's ztunnel do, instead of the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.getLogger("trellis.ztunnel").info("file descriptor limit %d", max(soft, hard))


def _hostport(value: str, what: str) -> tuple[str, int]:
    try:
        return parse_hostport(value, what, default_host="0.0.0.0")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", required=True, help="This node's name (as in WorkloadEntry spec.node).")
@click.option("--control-plane", "control_plane", required=True, help="Control plane API HOST:PORT (:15012).")
@click.option("--credential-dir", required=True, type=click.Path(path_type=Path),
              help="Directory with bootstrap.key, bootstrap.crt, roots.pem.")
@click.option("--run-dir", required=True, type=click.Path(path_type=Path), help="Where ztunnel.sock lives.")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--admin", "admin_addr", default="127.0.0.1:15000", show_default=True)
@click.option("--metrics", "metrics_addr", default="0.0.0.0:15020", show_default=True)
@click.option("--ready", "ready_addr", default="0.0.0.0:15021", show_default=True)
@click.option("--drain-timeout", default=30.0, show_default=True, help="Seconds to let connections finish on exit.")
@click.option("--log-level", default="INFO", show_default=True)
def main(node, control_plane, credential_dir, run_dir, trust_domain, admin_addr, metrics_addr, ready_addr,
         drain_timeout, log_level) -> None:
    """Trellis ztunnel: the per-node L4 proxy (HBONE, mTLS, L4 authorization)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise_fd_limit()
    from .app import Config, Ztunnel
    cfg = Config(node=node, control_plane=_hostport(control_plane, "--control-plane"),
                 credential_dir=credential_dir, run_dir=run_dir, trust_domain=trust_domain,
                 admin=_hostport(admin_addr, "--admin"), metrics=_hostport(metrics_addr, "--metrics"),
                 ready=_hostport(ready_addr, "--ready"), drain_timeout=drain_timeout)
    try:
        credential = load_credential(credential_dir)
        cp = ControlPlaneClient(cfg.control_plane, credential, node)
        trio.run(lambda: Ztunnel(cfg, cp).run())
    except (OSError, ValueError, ImportError) as exc:
        click.echo(f"ztunnel: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
