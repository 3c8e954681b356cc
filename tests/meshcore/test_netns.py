"""meshcore.netns against real network namespaces."""
import os
import socket
import subprocess
import uuid

import pytest

from meshcore import netns


@pytest.fixture
def ns_name():
    name = f"tt-netns-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_socket_created_inside_namespace_lives_there(ns_name):
    fd = netns.open_netns(ns_name)
    try:
        inner = netns.socket_in(fd)
        outer = socket.socket()
        with inner, outer:
            assert netns.netns_cookie(inner) != netns.netns_cookie(outer)
            # a listener bound inside is reachable from inside only
            inner.bind(("127.0.0.1", 0))
            inner.listen(1)
            port = inner.getsockname()[1]
            probe = subprocess.run(["ip", "netns", "exec", ns_name, "bash", "-c",
                                    f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo ok"],
                                   capture_output=True, text=True, timeout=10)
            assert probe.stdout.strip() == "ok"
            with pytest.raises(ConnectionRefusedError):
                outer.connect(("127.0.0.1", port))
    finally:
        os.close(fd)


def test_thread_returns_to_its_own_namespace(ns_name):
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with netns.entered_named(ns_name):
        assert os.stat("/proc/thread-self/ns/net").st_ino != before
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


def test_missing_namespace_is_a_clear_error():
    with pytest.raises(netns.NetnsError, match="tt-does-not-exist.*not found"):
        netns.open_netns("tt-does-not-exist")
