import os
import socket

import pytest

from meshcore import netns
from ztunnel import origdst


@pytest.fixture
def map_fd():
    fd = origdst.create_origdst_map(1024)
    yield fd
    os.close(fd)


def test_layout_sizes_match_internals():
    assert origdst.KEY.size == 16
    assert origdst.VALUE.size == 24


def test_put_take_ipv4_consumes_once(map_fd):
    origdst.put(map_fd, 0x1122334455667788, 40000, "10.96.0.10", 80)
    assert origdst.take(map_fd, 0x1122334455667788, 40000) == ("10.96.0.10", 80)
    assert origdst.take(map_fd, 0x1122334455667788, 40000) is None


def test_put_take_ipv6(map_fd):
    origdst.put(map_fd, 7, 1234, "fd00::1", 8080)
    assert origdst.take(map_fd, 7, 1234) == ("fd00::1", 8080)


def test_keys_distinguish_netns_and_port(map_fd):
    origdst.put(map_fd, 1, 1000, "10.0.0.1", 1)
    origdst.put(map_fd, 2, 1000, "10.0.0.2", 2)
    origdst.put(map_fd, 1, 1001, "10.0.0.3", 3)
    assert origdst.take(map_fd, 2, 1000) == ("10.0.0.2", 2)
    assert origdst.take(map_fd, 1, 1001) == ("10.0.0.3", 3)
    assert origdst.take(map_fd, 1, 1000) == ("10.0.0.1", 1)


def test_value_bytes_are_network_order_address_host_order_port():
    raw = origdst.encode_value("10.1.2.3", 0x1234)
    assert raw[:4] == bytes([10, 1, 2, 3])
    assert raw[20:22] == (0x1234).to_bytes(2, "little")
    assert int.from_bytes(raw[22:24], "little") == socket.AF_INET


def test_unknown_family_is_an_advising_error():
    raw = bytes(20) + (80).to_bytes(2, "little") + (99).to_bytes(2, "little")
    with pytest.raises(ValueError, match="maps.h"):
        origdst.decode_value(raw)


def test_cookie_from_real_socket(map_fd):
    with socket.socket() as s:
        cookie = netns.netns_cookie(s)
    assert cookie != 0
    origdst.put(map_fd, cookie, 5555, "192.0.2.1", 443)
    assert origdst.take(map_fd, cookie, 5555) == ("192.0.2.1", 443)


def test_bad_fd_raises():
    with pytest.raises(origdst.OrigDstError):
        origdst.take(9999, 1, 1)
