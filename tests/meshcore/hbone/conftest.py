from __future__ import annotations

import pytest
import trio

from meshcore.hbone.server import InboundTunnel, ServerStats, serve_hbone

from .certs import TestCA, server_ctx

CLIENT_ID = "spiffe://cluster.local/ns/tt-hbone/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/tt-hbone/sa/server"


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="session")
def foreign_ca() -> TestCA:
    return TestCA("tt-hbone-foreign-ca")


@pytest.fixture(scope="session")
def client_bundle(ca):
    return ca.issue(CLIENT_ID)


@pytest.fixture(scope="session")
def server_bundle(ca):
    return ca.issue(SERVER_ID)


async def echo(req: InboundTunnel) -> None:
    stream = await req.accept()
    while data := await stream.receive_some(256 * 1024):
        await stream.send_all(data)
    await stream.send_eof()


async def start_server(nursery: trio.Nursery, handler, bundle, n_listeners: int = 1,
                       stats: ServerStats | None = None, ctx_for=None) -> tuple[list[int], ServerStats]:
    """Bind loopback listeners on ephemeral ports and serve HBONE on them."""
    stats = stats or ServerStats()
    listeners = []
    for _ in range(n_listeners):
        listeners += await trio.open_tcp_listeners(0, host="127.0.0.1")
    ctx = server_ctx(bundle)
    await nursery.start(lambda task_status: serve_hbone(listeners, ctx_for or (lambda: ctx), handler,
                                                         handshake_timeout=2, stats=stats, task_status=task_status))
    return [ln.socket.getsockname()[1] for ln in listeners], stats
