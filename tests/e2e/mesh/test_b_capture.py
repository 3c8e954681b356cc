"""What crosses the wire between nodes: TLS when enrolled, plaintext when not."""
import uuid

import pytest

from e2e.labctl import Capture, wait_until

NS_AMBIENT = """apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    trellis.dev/dataplane-mode: ambient
"""
NS_PLAIN = """apiVersion: v1
kind: Namespace
metadata:
  name: default
"""


def test_traffic_between_nodes_is_tls_and_carries_no_plaintext(lab, tmp_path):
    marker = f"secret-{uuid.uuid4().hex}"
    cap = Capture(lab, tmp_path / "mesh.pcap")
    res = lab.curl("sleep", f"http://10.96.0.10/{marker}", "-d", marker)
    raw = cap.stop()
    assert res.returncode == 0, res.stderr
    assert marker in res.stdout  # the app got it and echoed it
    assert marker.encode() not in raw, "plaintext payload crossed the fabric"
    assert b"\x17\x03\x03" in raw, "no TLS application-data records on the fabric"
    assert ".15008" in cap.summary(), "traffic did not go to the HBONE port"


def test_unenrolled_namespace_sends_plaintext_and_reenrolling_restores_tls(lab, tmp_path):
    web1 = lab.ip("web-1")
    lab.apply(NS_PLAIN)
    try:
        lab.wait_enrolled("node1", "default/sleep", enrolled=False)
        lab.wait_enrolled("node2", "default/web-1", enrolled=False)
        marker = f"clear-{uuid.uuid4().hex}"
        cap = Capture(lab, tmp_path / "plain.pcap")
        res = lab.curl("sleep", f"http://{web1}:8080/{marker}")
        raw = cap.stop()
        assert res.returncode == 0, res.stderr
        assert marker.encode() in raw, "unenrolled traffic should be visible in plaintext"
    finally:
        lab.apply(NS_AMBIENT)
    lab.wait_enrolled("node1", "default/sleep")
    lab.wait_enrolled("node2", "default/web-1")
    # the same, already running app is captured again without a restart
    marker = f"again-{uuid.uuid4().hex}"
    cap = Capture(lab, tmp_path / "again.pcap")
    res = wait_until(lambda: lab.curl("sleep", f"http://{web1}:8080/{marker}").returncode == 0,
                     "curl after re-enrolling", timeout=20)
    raw = cap.stop()
    assert marker.encode() not in raw
