"""`python -m ztunnel --node NODE --control-plane HOST:PORT --credential-dir DIR --run-dir DIR`."""
from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import click
import trio


def _hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
    from .app import Config, Ztunnel, load_credential
    cfg = Config(node=node, control_plane=_hostport(control_plane, "--control-plane"),
                 credential_dir=credential_dir, run_dir=run_dir, trust_domain=trust_domain,
                 admin=_hostport(admin_addr, "--admin"), metrics=_hostport(metrics_addr, "--metrics"),
                 ready=_hostport(ready_addr, "--ready"), drain_timeout=drain_timeout)
    try:
        credential = load_credential(credential_dir)
        cp = control_plane_client(cfg.control_plane, credential, node)
        trio.run(lambda: Ztunnel(cfg, cp).run())
    except (OSError, ValueError, ImportError) as exc:
        click.echo(f"ztunnel: {exc}", err=True)
        sys.exit(1)


def control_plane_client(address: tuple[str, int], credential, node: str):
    try:
        from meshcore.cpclient import ControlPlaneClient
    except ImportError as exc:
        raise ImportError(f"meshcore.cpclient is not available ({exc}); update the installation") from None
    # internals.md calls the second argument bundle_provider, the brief a credential: accept both.
    params = list(inspect.signature(ControlPlaneClient).parameters)
    cred = (lambda: credential) if len(params) > 1 and "provider" in params[1] else credential
    return ControlPlaneClient(address, cred, node)


if __name__ == "__main__":
    main()
