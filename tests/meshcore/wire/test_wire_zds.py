"""ZDS messages: encode/decode round trips, fd counts, errors that name the field."""
import json

import pytest

from meshcore.wire import WireError, zds


@pytest.mark.parametrize("msg, nfds", [
    (zds.Hello(node="n1"), 1),
    (zds.AddPod(namespace="default", name="web-1", address="10.244.1.2", service_account="web"), 1),
    (zds.AddPod(namespace="default", name="web-1", address="10.244.1.2",
                listeners=("127.0.0.1:15001", "[::1]:15001", "0.0.0.0:15008")), 4),
    (zds.RemovePod(uid="default/web-1"), 0),
    (zds.SnapshotSent(), 0),
])
def test_requests_round_trip_with_their_fds(msg, nfds):
    assert zds.decode(zds.encode(msg), nfds) == msg
    with pytest.raises(WireError, match=f"needs {nfds} fd"):
        zds.decode(zds.encode(msg), nfds + 1)


def test_replies_round_trip():
    for reply, nfds in ((zds.Reply(), 0), (zds.Reply(ok=False, error="cannot bind"), 0),
                        (zds.Reply(listeners=("0.0.0.0:15008",)), 1)):
        assert zds.decode_reply(zds.encode(reply), nfds) == reply
    assert json.loads(zds.encode(zds.Reply())) == {"ok": True}  # what older node agents check


def test_add_wire_form_and_defaults():
    msg = zds.AddPod(namespace="ns", name="p", address="10.0.0.1")
    assert json.loads(zds.encode(msg)) == {"op": "add", "namespace": "ns", "name": "p", "address": "10.0.0.1"}
    assert msg.uid == "ns/p" and msg.service_account == "default"
    # a field a newer node agent adds is ignored
    assert zds.decode(b'{"op":"add","namespace":"ns","name":"p","address":"10.0.0.1","future":1}', 1) == msg


@pytest.mark.parametrize("data, words", [
    (b'{"op":"add","namespace":"ns","name":"p"}', ["add message", "'address'"]),
    (b'{"op":"add","namespace":"ns","name":"p","address":7}', ["'address'", "string"]),
    (b'{"op":"add","namespace":"ns","name":"p","address":"a","listeners":"x"}', ["'listeners'", "list"]),
    (b'{"op":"hello","node":""}', ["hello message", "'node'"]),
    (b'{"op":"remove"}', ["remove message", "'uid'"]),
    (b'{"op":"frob"}', ["unknown op 'frob'"]),
    (b'[1]', ["not a JSON object"]),
    (b'{nope', ["not JSON"]),
])
def test_bad_messages_name_the_field(data, words):
    with pytest.raises(WireError) as info:
        zds.decode(data, 1)
    for w in words:
        assert w in str(info.value)


def test_oversized_message_is_refused_before_sending():
    with pytest.raises(WireError, match="over the limit"):
        zds.encode(zds.Hello(node="n" * zds.MAX_MESSAGE))
