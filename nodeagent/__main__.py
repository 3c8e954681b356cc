"""python -m nodeagent: load the eBPF programs, follow the control plane, enroll pods.

SIGTERM/SIGINT detach every program and exit 0; nothing is pinned, so nothing stays.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
import trio

from meshcore import ports
from meshcore.addr import parse_hostport
from meshcore.cpclient import ControlPlaneClient, CredentialError, load_credential
from meshcore import netns as mnetns
from meshcore.netns import NetnsError
from .agent import NodeAgent
from .handoff import HandoffClient
from .headers import HeadersNotFound
from .loader import LoaderError, Programs

log = logging.getLogger("trellis.nodeagent")


def enter_netns(name: str) -> None:
    """Move the (still single-threaded) process into `name` for good."""
    fd = mnetns.open_netns(name)
    try:
        mnetns._setns(fd)
    finally:
        os.close(fd)


def parse_address(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text, "--control-plane", example=f"10.100.0.1:{ports.CONTROL_PLANE}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


async def watch_forever(cp, agent: NodeAgent, on_update=None) -> None:
    """The client reconnects by itself; this only keeps the agent up if it gives up."""
    backoff = 1.0
    while True:
        try:
            await cp.watch(on_update or agent.on_update)
        except Exception as e:
            log.error("control plane watch stopped (%s: %s); restarting in %.0fs, keeping %d pod(s) enrolled "
                      "from config version %s", type(e).__name__, e, backoff, len(agent.enrolled), agent.version)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


async def serve(node: str, cp, run_dir: Path, excluded: tuple[int, ...], node_addresses: tuple[str, ...] = (),
                pods=None) -> None:
    """`pods`: in a cluster, the node's pods from the API (nodeagent.kube.NodePods)."""
    programs = Programs(excluded_ports=excluded, node_addresses=node_addresses)
    handoff = HandoffClient(run_dir / "ztunnel.sock", node, programs.origdst_fd)
    agent = NodeAgent(node, programs, handoff) if pods is None else \
        NodeAgent(node, programs, handoff, find_cgroup=lambda pod: pods.cgroup_of(pod.namespace, pod.name))
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                if pods is not None:
                    await nursery.start(pods.run)
                    nursery.start_soon(pods.feed, agent.on_update)
                if cp is not None:
                    nursery.start_soon(watch_forever, cp, agent, pods.on_update if pods is not None else None)
                log.info("node agent for %s running (ztunnel socket %s)", node, handoff.path)
                async for signum in signals:
                    log.info("received %s: detaching everything", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        try:
            agent.shutdown()
        finally:
            programs.close()
    log.info("node agent stopped; no programs left attached")


def _node_pods(node: str, kubeconfig: str | None, cgroup_root: Path | None):
    # lightkube and httpx only for an agent that reads the API server
    from kubewatch.client import KubeApi, load_config
    from .cgroups import cgroup2_mount
    from .kube import NodePods
    return NodePods(KubeApi(load_config(kubeconfig)), node, cgroup_root or cgroup2_mount())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", required=True, help="This node's name (WorkloadEntry spec.node).")
@click.option("--control-plane", "control_plane", required=True, help=f"Control plane HOST:PORT (mTLS, {ports.CONTROL_PLANE}).")
@click.option("--credential-dir", type=click.Path(path_type=Path),
              help="Holds bootstrap.key, bootstrap.crt, roots.pem (or, in a cluster, --token-file).")
@click.option("--token-file", type=click.Path(path_type=Path),
              help="In a cluster: the projected ServiceAccount token the control plane checks (with --ca-root-file).")
@click.option("--ca-root-file", type=click.Path(path_type=Path), help="With --token-file: the mesh root certificate(s).")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--source", "pod_source", type=click.Choice(["controlplane", "kubernetes"]), default="controlplane",
              show_default=True, help="Where the node's pods are found: the control plane's WorkloadEntries (lab), "
                                      "or the API server's pods of this node, by UID under the kubelet's cgroups.")
@click.option("--kubeconfig", help="With --source kubernetes: kubeconfig (default: in-cluster, else $KUBECONFIG).")
@click.option("--kubelet-cgroup-root", type=click.Path(path_type=Path),
              help="With --source kubernetes: where the kubelet's kubepods cgroups live (default: the cgroup2 mount).")
@click.option("--run-dir", type=click.Path(path_type=Path), required=True,
              help="Where ztunnel listens on ztunnel.sock.")
@click.option("--netns", default=None, help="Network namespace to reach the control plane from (lab: trellis-<node>).")
@click.option("--exclude-port", "exclude_ports", type=click.IntRange(1, 65535), multiple=True,
              help="Destination port never captured (repeatable).")
@click.option("--node-address", "node_addresses", multiple=True,
              help="This node's own address (repeatable; the chart passes status.hostIP): under STRICT, plaintext "
                   "from it (the kubelet's health probes) still reaches enrolled pods.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(node, control_plane, credential_dir, token_file, ca_root_file, trust_domain, pod_source, kubeconfig,
         kubelet_cgroup_root, run_dir, netns, exclude_ports, node_addresses, log_level):
    """Trellis node agent: attaches the capture eBPF programs to enrolled pods' cgroups
    and hands each pod's network namespace to ztunnel."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = parse_address(control_plane)
    if (credential_dir is None) == (token_file is None) or (token_file and not ca_root_file):
        raise click.UsageError("give --credential-dir, or --token-file with --ca-root-file")
    try:
        pods = _node_pods(node, kubeconfig, kubelet_cgroup_root) if pod_source == "kubernetes" else None
        bundle = load_credential(credential_dir) if credential_dir else None
        if netns:
            # The process is single-threaded here, so its sockets (the control-plane
            # connection) are created in `netns`; BPF, cgroups and the Unix socket are
            # not tied to a network namespace.
            enter_netns(netns)
        cp = ControlPlaneClient(address, bundle, node, token_file=token_file, trust_domain=trust_domain,
                                roots=Path(ca_root_file).read_bytes() if ca_root_file else b"")
        trio.run(serve, node, cp, run_dir, tuple(exclude_ports), tuple(node_addresses), pods)
    except (CredentialError, HeadersNotFound, LoaderError, NetnsError, ValueError, OSError) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main(prog_name="python -m nodeagent")
