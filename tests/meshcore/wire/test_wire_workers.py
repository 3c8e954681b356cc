"""Owner <-> worker messages: round trips with their fds, bodies in memfds, clear errors."""
import json
import os

import pytest

from meshcore.wire import WireError, workers, zds
from meshcore.wire.packets import body_fd, read_body


@pytest.mark.parametrize("msg, nfds", [
    (workers.OrigDst(), 1),
    (workers.Snapshot(seq=3, version=17), 1),
    (workers.Snapshot(seq=1), 1),
    (workers.Snapshot(seq=5, version=20, base=4), 1),
    (workers.Certificate(identity="spiffe://td/ns/a/sa/b", key_pem="K", chain=("C1", "C2"), roots=("R",),
                         received="2026-01-01T00:00:00+00:00"), 0),
    (zds.AddPod(namespace="a", name="p", address="10.0.0.1", listeners=("127.0.0.1:15001", "0.0.0.0:15008")), 3),
    (zds.RemovePod(uid="a/p"), 0),
    (workers.Scrape(seq=9), 0),
    (workers.Stats(seq=9), 1),
    (workers.Ping(seq=4), 0),
    (workers.Pong(seq=4), 0),
])
def test_messages_round_trip_with_their_fds(msg, nfds):
    assert workers.decode(workers.encode(msg), nfds) == msg
    with pytest.raises(WireError, match=f"needs {nfds} fd"):
        workers.decode(workers.encode(msg), nfds + 1)


def test_snapshot_without_a_control_plane_version_says_minus_one():
    assert json.loads(workers.encode(workers.Snapshot(seq=2))) == {"op": "snapshot", "seq": 2}
    assert workers.decode(b'{"op":"snapshot","seq":2}', 1).version == -1
    assert workers.decode(b'{"op":"snapshot","seq":2}', 1).base == -1   # every resource


@pytest.mark.parametrize("data, words", [
    (b'{"op":"snapshot"}', ["worker snapshot message", "'seq'"]),
    (b'{"op":"snapshot","seq":"1"}', ["'seq'", "integer"]),
    (b'{"op":"snapshot","seq":true}', ["'seq'", "integer"]),
    (b'{"op":"certificate","identity":"x","key":"k","chain":"c","roots":[],"received":"t"}', ["'chain'", "list"]),
    (b'{"op":"hello","node":"n"}', ["unknown op 'hello'"]),
])
def test_bad_messages_name_the_field(data, words):
    with pytest.raises(WireError) as info:
        workers.decode(data, 1)
    for w in words:
        assert w in str(info.value)


def test_bodies_travel_in_a_memfd():
    data = os.urandom(300_000)  # bigger than any packet
    fd = body_fd(data)
    try:
        assert read_body(fd) == data
        assert read_body(fd) == data  # pread: reading twice gives the same bytes
        with pytest.raises(WireError, match="over the limit"):
            read_body(fd, limit=1000)
    finally:
        os.close(fd)
