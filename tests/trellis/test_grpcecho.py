"""The lab's sample gRPC app, run as a lab pod runs it (`python -m trellis.lab.grpcecho`),
called by a grpcio client."""
import json
import os
import socket
import subprocess
import sys

import grpc
import pytest



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trellis.lab.grpcecho", "--host", "127.0.0.1",
                             "--port", str(port), *args], env={**os.environ, "POD_NAME": "grpc-1"},
                            stderr=subprocess.PIPE)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    return proc, channel


@pytest.fixture
def flaky():
    proc, channel = start("--fail-every", "2")
    yield channel
    channel.close()
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()


def test_answers_any_method_and_fails_every_other_call(flaky):
    say = flaky.unary_unary("/trellis.lab.Echo/Say")
    first = json.loads(say(b"hi", timeout=10, metadata=(("x-twice", "a"), ("x-twice", "b"), ("x-bin", b"\x01"))))
    assert first.pop("peer").startswith("ipv4:127.0.0.1:")
    seen = first.pop("metadata")   # a repeated key's values joined, as the echo app reports headers
    assert seen["x-twice"] == "a,b" and seen["x-bin"] == "01" and seen["user-agent"].startswith("grpc-python")
    assert first == {"pod": "grpc-1", "method": "/trellis.lab.Echo/Say", "call": 1, "request": "hi"}
    with pytest.raises(grpc.RpcError) as err:
        flaky.unary_unary("/other.Svc/Who")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "call 2 fails on purpose" in err.value.details()
    assert json.loads(say(b"again", timeout=10))["call"] == 3


def test_bad_fail_code_is_a_clear_error():
    res = subprocess.run([sys.executable, "-m", "trellis.lab.grpcecho", "--fail-code", "NOPE"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "'NOPE' is not a gRPC error status name" in res.stderr
