"""The control-plane API over real mTLS, with the real client."""
import json
import os
import socket
import ssl
import struct
from functools import partial

import pytest
import trio

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from cp_helpers import client, running_api, workload
from meshcore import tls
from meshcore.cpclient import ControlPlaneClient, ControlPlaneError
from meshcore.identity import CertBundle
from meshcore.jsonlines import encode

WEB = "spiffe://cluster.local/ns/default/sa/web"


async def test_sign_only_for_workloads_on_the_asking_node(tmp_path):
    async with running_api(tmp_path) as (ca, source, api, port, _):
        chain, roots = await client(ca, port, "node2").sign(build_csr(generate_key(), WEB))
        assert CertBundle(key_pem(generate_key()), tuple(chain), tuple(roots)).identity == WEB
        with pytest.raises(ControlPlaneError, match="node node1: .*sa/web does not belong to any workload"):
            await client(ca, port, "node1").sign(build_csr(generate_key(), WEB))
        with pytest.raises(ControlPlaneError, match="not a PEM certificate signing request"):
            await client(ca, port, "node2").sign(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
        assert api.stats["signed"] == 1 and api.stats["refused"] == 2


async def test_watch_snapshot_then_delta_then_resume(tmp_path):
    async with running_api(tmp_path) as (ca, source, api, port, nursery):
        c = client(ca, port, "node1")
        send, updates = trio.open_memory_channel(10)
        await nursery.start(c.watch, lambda res, v: send.send_nowait((v, set(res))))
        version, keys = updates.receive_nowait()
        assert version == 1 and ("WorkloadEntry", "default", "web") in keys
        (tmp_path / "config" / "db.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
        with trio.fail_after(5):
            assert (await updates.receive())[0] == 2
        assert ("WorkloadEntry", "default", "db") in c.resources and c.connected
    # resume: a fresh server with history 1..2; a client that applied 1 gets a delta
    async with running_api(tmp_path / "again") as (ca, source, api, port, nursery):
        (tmp_path / "again" / "config" / "db.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
        source.reload()
        messages = await _raw_watch(ca, port, "node1", since=1)
        assert messages[0]["type"] == "delta" and messages[0]["version"] == 2
        assert [u["metadata"]["name"] for u in messages[0]["upserts"]] == ["db"]
        messages = await _raw_watch(ca, port, "node1", since=77)
        assert messages[0]["type"] == "snapshot", "an unknown version gets a snapshot"
        messages = await _raw_watch(ca, port, "node2", since=None, as_node="node1")
        assert messages[0] == {"ok": False, "error": "node node1 may only watch its own view, not 'node2'"}


async def _raw_watch(ca, port, node, since, as_node=None):
    cred = ca.issue_node_credential(as_node or node)
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(cred, ["trellis-cp"]))
    await stream.send_all(encode({"op": "watch", "node": node, "since": since}))
    data = b""
    with trio.move_on_after(2):
        while b"\n" not in data:
            data += await stream.receive_some(1 << 20)
    await trio.aclose_forcefully(stream)
    return [json.loads(line) for line in data.split(b"\n") if line]


async def test_client_keeps_its_snapshot_while_the_server_is_away(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    c = None
    async with trio.open_nursery() as outer:
        async with running_api(tmp_path) as (ca, source, api, port, nursery):
            c = client(ca, port, "node1")
            await outer.start(c.watch, lambda res, v: None)
            assert c.connected and c.version == 1
        # the server is gone (its nursery was cancelled): the client notices, keeps what it had
        with trio.fail_after(10):
            while c.connected:
                await trio.sleep(0.05)
        assert c.version == 1 and ("WorkloadEntry", "default", "web") in c.resources
        assert "cannot reach" in c.last_error or "closed" in c.last_error
        outer.cancel_scope.cancel()


async def test_garbage_never_stops_the_server(tmp_path):
    async with running_api(tmp_path) as (ca, source, api, port, _):
        # random bytes, a plaintext HTTP request
        for junk in (os.urandom(2048), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.send_all(junk)
            with trio.move_on_after(2):
                await s.receive_some(100)
            await s.aclose()
        # a foreign CA's node credential: the handshake fails
        foreign = CertificateAuthority.load_or_create(tmp_path / "foreign", "cluster.local")
        stranger = ControlPlaneClient(("127.0.0.1", port), foreign.issue_node_credential("node1"), "node1")
        with pytest.raises(ControlPlaneError, match="TLS with control plane .* failed .*same mesh CA"):
            await stranger.sign(build_csr(generate_key(), WEB))
        # a mesh-signed workload certificate is not a node credential
        key = generate_key()
        wl = CertBundle(key_pem(key), tuple(ca.sign_workload_csr(build_csr(key, WEB))), ca.roots_pem)
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(wl, ["trellis-cp"]))
        await stream.send_all(encode({"op": "sign", "csr": "x"}))
        reply = await stream.receive_some(4096)
        assert b"is not a node credential" in reply
        await trio.aclose_forcefully(stream)
        # unknown op and an oversized line over a good credential
        good = ca.issue_node_credential("node2")
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(good, ["trellis-cp"]))
        await stream.send_all(encode({"op": "dance"}))
        assert b"unknown op 'dance'" in await stream.receive_some(4096)
        await trio.aclose_forcefully(stream)
        # an oversized line: the server stops reading and refuses; with bytes still unsent
        # the kernel may reset the connection before the reply is read, which is fine too
        bad_before = api.stats["bad_requests"]
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(good, ["trellis-cp"]))
        with trio.fail_after(20):
            try:
                await stream.send_all(b"{" + b" " * (17 * 1024 * 1024))
                assert b"longer than" in await stream.receive_some(4096)
            except trio.BrokenResourceError:
                pass
            while api.stats["bad_requests"] == bad_before:
                await trio.sleep(0.01)
        await trio.aclose_forcefully(stream)
        assert api.stats["tls_failures"] >= 2 and api.stats["bad_requests"] >= 2
        # and it still serves a good client
        chain, _ = await client(ca, port, "node2").sign(build_csr(generate_key(), WEB))
        assert chain


async def test_client_reconnects_to_a_restarted_control_plane_and_catches_up(tmp_path):
    """A restarted control plane has no history of its predecessor's versions: the client,
    resuming `since` its last version, must get a snapshot with what changed meanwhile."""
    send, updates = trio.open_memory_channel(10)
    async with trio.open_nursery() as outer:
        async with running_api(tmp_path, first_version=1) as (ca, source, api, port, _):
            c = client(ca, port, "node1")
            await outer.start(c.watch, lambda res, v: send.send_nowait(v))
            assert updates.receive_nowait() == 1
        # while it is away: an edit, and the new process will count from its own clock
        (tmp_path / "config" / "db.yaml").write_text(workload("db", "node1", "db", "10.244.1.9"))
        async with running_api(tmp_path, first_version=1000, port=port) as (ca, source, api, port, _):
            with trio.fail_after(20):
                assert await updates.receive() == 1000
            assert ("WorkloadEntry", "default", "db") in c.resources, "the client caught up with the edit"
            assert c.last_error is None and c.connected
        outer.cancel_scope.cancel()


async def test_a_reset_watch_gives_advice_not_a_bare_exception_name(tmp_path):
    """A control plane that goes away mid-watch is seen as a clean EOF, a truncated TLS
    stream or a reset, depending on timing alone; each must read as advice. This server
    always resets (SO_LINGER 0), the case that once surfaced as 'BrokenResourceError'."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    server_ctx = tls.server_context(ca.issue_server_credential(), alpn=["trellis-cp"])
    served = trio.Event()

    async def reset_after_request(tcp):
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        await stream.do_handshake()
        await stream.receive_some(4096)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tcp.socket.close()
        served.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, reset_after_request, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        c = client(ca, port, "node1")
        nursery.start_soon(c.watch, lambda res, v: None)
        with trio.fail_after(10):
            await served.wait()
            while c.last_error is None:
                await trio.sleep(0.01)  # the client has no event for "gave up"; bounded above
        assert "closed the watch" in c.last_error and f"127.0.0.1:{port}" in c.last_error, c.last_error
        nursery.cancel_scope.cancel()
