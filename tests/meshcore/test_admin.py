"""The admin HTTP helper: real sockets, real netns for the CLI-side GET."""
import socket
import subprocess
import uuid

import pytest
import trio

from meshcore import admin, netns


async def _serve(nursery, routes, **kw):
    listener = await nursery.start(lambda task_status: admin.serve_http("127.0.0.1", 0, routes, task_status=task_status, **kw))
    return listener.socket.getsockname()[1]


async def test_routes_errors_and_garbage_do_not_kill_the_server():
    async def ok(req):
        return admin.Response({"path": req.path, "query": req.query})

    async def boom(req):
        raise ValueError("bad state")

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, {"/ok": ok, "/boom": boom})
        get = lambda p: trio.to_thread.run_sync(lambda: admin.http_get("127.0.0.1", port, p))
        assert await trio.to_thread.run_sync(lambda: admin.get_json("127.0.0.1", port, "/ok?a=1")) == {"path": "/ok", "query": "a=1"}
        status, body = await get("/nope")
        assert status == 404 and b"/ok" in body
        status, body = await get("/boom")
        assert status == 500 and b"bad state" in body
        # garbage on the wire: the server answers 400 or closes, and keeps serving
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"\x16\x03\x01garbage\r\n\r\n")
        with trio.move_on_after(5):
            await s.receive_some(100)
        await s.aclose()
        status, _ = await get("/ok")
        assert status == 200
        nursery.cancel_scope.cancel()


async def test_listener_inside_a_netns_reached_by_http_get():
    name = f"tt-admin-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        fd = netns.open_netns(name)

        async def hz(req):
            return admin.Response("ok")

        async with trio.open_nursery() as nursery:
            listener = await nursery.start(lambda task_status: admin.serve_http(
                "127.0.0.1", 15999, {"/healthz": hz}, netns_fd=fd, task_status=task_status))
            assert listener.socket.getsockname()[1] == 15999
            status, body = await trio.to_thread.run_sync(
                lambda: admin.http_get("127.0.0.1", 15999, "/healthz", netns=name))
            assert (status, body) == (200, b"ok")
            with pytest.raises(OSError):  # not reachable from the host namespace
                await trio.to_thread.run_sync(lambda: admin.http_get("127.0.0.1", 15999, "/healthz", timeout=1))
            nursery.cancel_scope.cancel()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
