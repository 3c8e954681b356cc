"""Helpers for the control-plane tests: a real CA, real config files, a real API server."""
from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from controlplane.api import ApiServer
from controlplane.ca import CertificateAuthority
from controlplane.sources.directory import DirectorySource
from controlplane.store import VersionedStore
from meshcore.cpclient import ControlPlaneClient

NS = """apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {trellis.dev/dataplane-mode: ambient}
"""


def workload(name: str, node: str, sa: str, address: str, ns: str = "default") -> str:
    return (f"apiVersion: trellis.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{address: {address}, node: {node}, serviceAccount: {sa}, labels: {{app: {name}}}}}\n")


def policy(name: str, ns: str) -> str:
    return (f"apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{action: DENY}}\n")


def write_config(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ns.yaml").write_text(NS)
    (d / "web.yaml").write_text(workload("web", "node2", "web", "10.244.2.2"))
    (d / "sleep.yaml").write_text(workload("sleep", "node1", "sleep", "10.244.1.2"))
    return d


@contextlib.asynccontextmanager
async def running_api(tmp_path: Path, poll: float = 0.05, first_version: int = 1, port: int = 0):
    """A CA, a store fed by a watched directory and the API on an OS-chosen loopback port."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    cfg = tmp_path / "config"
    store = VersionedStore(first_version=first_version)
    source = DirectorySource(cfg if cfg.is_dir() else write_config(cfg), store, poll_interval=poll)
    api = ApiServer(ca, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        listeners = await nursery.start(api.serve, "127.0.0.1", port)
        port = listeners[0].socket.getsockname()[1]
        yield ca, source, api, port, nursery
        nursery.cancel_scope.cancel()


def directory_store(d: Path, poll: float = 0.5) -> tuple[VersionedStore, DirectorySource]:
    store = VersionedStore(first_version=1)
    return store, DirectorySource(d, store, poll_interval=poll)


def client(ca: CertificateAuthority, port: int, node: str) -> ControlPlaneClient:
    return ControlPlaneClient(("127.0.0.1", port), ca.issue_node_credential(node), node)
