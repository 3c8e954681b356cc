"""`python -m controlplane`: the CA, the config store and the watch API in one process."""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
import trio

from meshcore import admin, ports
from meshcore.addr import parse_hostport

from .api import ApiServer
from .ca import CertificateAuthority, parse_duration, write_credential
from .sources.directory import DirectorySource
from .store import VersionedStore


def _hostport(text: str, flag: str) -> tuple[str, int]:
    try:
        return parse_hostport(text, flag, default_host="0.0.0.0")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _source(kind: str, store: VersionedStore, config_dir: Path | None, kubeconfig: str | None, context: str | None):
    if kind == "directory":
        return DirectorySource(config_dir, store)
    # lightkube and httpx only for a control plane that reads the API server
    from kubewatch.client import KubeApi, load_config
    from .sources.kubernetes import KubernetesSource
    return KubernetesSource(KubeApi(load_config(kubeconfig, context)), store)


async def run(ca: CertificateAuthority, source_of, listen: tuple[str, int], admin_addr: tuple[str, int],
              tokens=None, controllers=()) -> None:
    """`controllers`: in Kubernetes mode, factories (source, store) -> a controller to run
    once the source has synced (the waypoint Deployments, the root ConfigMaps)."""
    store = VersionedStore()
    source = source_of(store)
    api = ApiServer(ca, store, tokens(source) if tokens else None)

    async def healthz(_req):
        snap = store.current()
        return admin.Response({"status": "ok", "version": snap.version, "errors": len(snap.errors), **api.stats})

    async def metrics(_req):
        from prometheus_client import generate_latest
        return admin.Response(generate_latest(api.registry), content_type="text/plain; version=0.0.4")

    async def config_dump(_req):
        dump = store.dump()
        if hasattr(source, "dump"):
            dump["sourceStatus"] = source.dump()
        return admin.Response(dump)

    async with trio.open_nursery() as nursery:
        # bind everything first: a port in use fails start-up at once
        admin_listener = await admin.open_listener(*admin_addr)
        await nursery.start(source.run)
        for controller in controllers:
            await nursery.start(controller(source, store).run)
        await nursery.start(api.serve, *listen)
        await nursery.start(lambda task_status: admin.serve_http(*admin_addr, {"/healthz": healthz, "/config_dump": config_dump,
                                                                               "/metrics": metrics},
                                                                 listener=admin_listener, task_status=task_status))
        logging.getLogger("trellis.controlplane").info(
            "event=started listen=%s:%d admin=%s:%d source=%r version=%d", *listen, *admin_addr, source.describe(),
            store.version)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logging.getLogger("trellis.controlplane").info("event=stopping")
                nursery.cancel_scope.cancel()
                break


async def _ca_from_secret(kubeconfig, context, namespace, trust_domain, ttl) -> CertificateAuthority:
    from kubewatch.client import KubeApi, describe, load_config
    from .casecret import load_or_create
    api = KubeApi(load_config(kubeconfig, context))
    try:
        ca, where = await load_or_create(api, namespace, trust_domain, ttl)
    except Exception as exc:
        raise RuntimeError(describe(exc)) from None
    finally:
        await api.aclose()
    logging.getLogger("trellis.controlplane").info("event=ca_loaded from=%r", where)
    return ca


@click.command()
@click.option("--source", "source_kind", type=click.Choice(["directory", "kubernetes"]), default="directory",
              show_default=True, help="where resources come from: --config-dir, or the Kubernetes API (list+watch)")
@click.option("--config-dir", type=click.Path(path_type=Path), help="directory of YAML resources to serve")
@click.option("--kubeconfig", help="with --source kubernetes: kubeconfig file (default: in-cluster, else $KUBECONFIG)")
@click.option("--context", "kube_context", help="with --source kubernetes: kubeconfig context (default: current)")
@click.option("--ca-dir", type=click.Path(path_type=Path),
              help="where the CA keys live (created on first start); with --source kubernetes and no --ca-dir, "
                   "in Secrets of --namespace (cacerts, else trellis-ca, created on first start)")
@click.option("--namespace", default=lambda: os.environ.get("POD_NAMESPACE", "trellis-system"),
              show_default="$POD_NAMESPACE or trellis-system", help="with --source kubernetes: the control plane's namespace")
@click.option("--waypoint-image", envvar="TRELLIS_IMAGE", default="trellis:latest", show_default=True,
              help="with --source kubernetes: the image of the waypoint Deployments it creates")
@click.option("--waypoint-control-plane", metavar="HOST:PORT",
              help="with --source kubernetes: where waypoint pods reach the control plane "
                   f"(default trellis-controlplane.<namespace>.svc:{ports.CONTROL_PLANE})")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--listen", default=f"0.0.0.0:{ports.CONTROL_PLANE}", show_default=True)
@click.option("--admin", "admin_addr", default=f"127.0.0.1:{ports.CONTROL_PLANE_ADMIN}", show_default=True)
@click.option("--cert-ttl", default="24h", show_default=True, help="workload certificate lifetime (90s, 10m, 24h)")
@click.option("--issue-node-credential", "issue_node", metavar="NODE", help="write NODE's bootstrap credential to --out and exit")
@click.option("--out", type=click.Path(path_type=Path), help="with --issue-node-credential")
@click.option("--token-audience", default="trellis-ca", show_default=True,
              help="with --source kubernetes: the audience nodes' ServiceAccount tokens are projected for")
@click.option("--node-account", "node_accounts", multiple=True, default=["trellis-system/ztunnel"], show_default=True,
              help="with --source kubernetes: NAMESPACE/SERVICEACCOUNT whose pod-bound tokens speak for a node")
@click.option("--log-level", default="INFO", show_default=True)
def main(source_kind, config_dir, kubeconfig, kube_context, ca_dir, trust_domain, listen, admin_addr, cert_ttl, issue_node,
         out, token_audience, node_accounts, log_level, namespace, waypoint_image, waypoint_control_plane):
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    try:
        ttl = parse_duration(cert_ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cert-ttl")
    if ca_dir is None and source_kind != "kubernetes":
        raise click.UsageError("--ca-dir is required (or --source kubernetes, which keeps the CA in a Secret)")
    try:
        if ca_dir is None:
            ca = trio.run(_ca_from_secret, kubeconfig, kube_context, namespace, trust_domain, ttl)
        else:
            ca = CertificateAuthority.load_or_create(ca_dir, trust_domain, ttl)
    except Exception as exc:  # noqa: BLE001 - any reason, said once, and exit
        click.echo(f"controlplane: cannot load the CA from {ca_dir or f'namespace {namespace}'}: {exc}", err=True)
        sys.exit(1)
    if issue_node:
        if not out:
            raise click.UsageError("--issue-node-credential needs --out DIR")
        write_credential(ca.issue_node_credential(issue_node), out)
        click.echo(f"wrote the credential of node {issue_node} to {out}")
        return
    if source_kind == "directory" and not config_dir:
        raise click.UsageError("--config-dir is required to serve (or --source kubernetes)")
    listen_at, admin_at = _hostport(listen, "--listen"), _hostport(admin_addr, "--admin")
    if source_kind == "kubernetes":
        from kubewatch.client import KubeConfigError, load_config
        try:
            load_config(kubeconfig, kube_context)  # a bad kubeconfig fails now, with its reason
        except KubeConfigError as exc:
            click.echo(f"controlplane: {exc}", err=True)
            sys.exit(1)
    tokens, controllers = None, []
    if source_kind == "kubernetes":  # nodes and waypoints may authenticate with their ServiceAccount token
        from .rootcert import RootCertPublisher
        from .statuswriter import StatusWriter
        from .tokenreview import TokenReviewer
        from .waypoints import Settings, WaypointReconciler
        tokens = lambda source: TokenReviewer(source.api, token_audience, tuple(node_accounts))  # noqa: E731
        settings = Settings(image=waypoint_image, trust_domain=trust_domain, token_audience=token_audience,
                            control_plane=waypoint_control_plane or
                            f"trellis-controlplane.{namespace}.svc:{ports.CONTROL_PLANE}")
        root_pem = b"".join(ca.roots_pem).decode()
        controllers = [lambda source, store: WaypointReconciler(source.api, store, settings),
                       lambda source, store: RootCertPublisher(source.api, store, root_pem),
                       lambda source, store: StatusWriter(source.api, store)]
    try:
        trio.run(run, ca, lambda store: _source(source_kind, store, config_dir, kubeconfig, kube_context),
                 listen_at, admin_at, tokens, controllers)
    except OSError as exc:
        click.echo(f"controlplane: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
