"""The control-plane API messages: what one side builds the other parses, and bad input
names the message and the field."""
import json

import pytest

from meshcore.wire import WireError, watch


def roundtrip_request(msg):
    return watch.parse_request(json.loads(watch.encode(msg)))


def roundtrip_event(msg):
    return watch.parse_event(json.loads(watch.encode(msg)))


@pytest.mark.parametrize("msg", [
    watch.SignRequest("-----BEGIN CERTIFICATE REQUEST-----\n..."),
    watch.WatchRequest(watch.NODE, "node1", None),
    watch.WatchRequest(watch.NODE, None, 7),
    watch.WatchRequest(watch.WAYPOINT, "shop/waypoint", 3),
])
def test_requests_round_trip(msg):
    assert roundtrip_request(msg) == msg


def test_node_subscription_keeps_the_old_form():
    """A control plane that predates subscriber kinds reads `node`; an old client's request parses."""
    assert json.loads(watch.encode(watch.WatchRequest(watch.NODE, "n1", 4))) == {"op": "watch", "node": "n1", "since": 4}
    assert watch.parse_request({"op": "watch", "node": "n1", "since": None}) == watch.WatchRequest(watch.NODE, "n1")


@pytest.mark.parametrize("msg", [
    watch.Snapshot(3, ({"kind": "Namespace", "metadata": {"name": "a"}},)),
    watch.Delta(4, ({"kind": "Service"},), (("Service", "default", "web"), ("Namespace", "", "old"))),
    watch.Ping(9),
    watch.ErrorReply("node n1 may only watch its own view"),
])
def test_events_round_trip(msg):
    assert roundtrip_event(msg) == msg


def test_sign_reply_round_trips():
    reply = watch.SignReply(("leaf", "intermediate"), ("root",))
    assert watch.parse_sign_reply(json.loads(watch.encode(reply))) == reply
    assert watch.parse_sign_reply({"ok": False, "error": "no such workload"}) == watch.ErrorReply("no such workload")


@pytest.mark.parametrize("obj, words", [
    ({"op": "sign"}, ["sign request", "'csr'"]),
    ({"op": "sign", "csr": 5}, ["'csr'", "str"]),
    ({"op": "watch", "since": "x"}, ["watch request", "'since'", "int"]),
    ({"op": "watch", "since": True}, ["'since'"]),
    ({"op": "watch", "subscriber": "gateway"}, ["'subscriber'", "node, waypoint"]),
    ({"op": "dance"}, ["unknown op 'dance'"]),
])
def test_bad_requests_name_the_field(obj, words):
    with pytest.raises(WireError) as info:
        watch.parse_request(obj)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("obj, words", [
    ({"type": "snapshot"}, ["watch snapshot message", "'version'"]),
    ({"type": "delta", "version": 2, "deletes": [["Service", "x"]]}, ["'deletes[0]'"]),
    ({"type": "delta", "version": 2, "upserts": ["x"]}, ["'upserts[0]'"]),
    ({"type": "gossip", "version": 1}, ["unknown type 'gossip'"]),
])
def test_bad_events_name_the_field(obj, words):
    with pytest.raises(WireError) as info:
        watch.parse_event(obj)
    for w in words:
        assert w in str(info.value)
