"""A pod opted out of the mesh (`trellis.dev/dataplane-mode: none`) in an enrolled
namespace (issue 10): the lab comes up, the node agent leaves it alone, and ztunnel
reaches it in plaintext instead of over HBONE, so requests through the Service VIP that
pick it do not fail."""
import json
import uuid
from pathlib import Path

import pytest

from e2e.labctl import Capture, metric_value, running

LAB_DIR = Path(__file__).resolve().parent / "optout"
VIP = "10.96.0.30"
REQUESTS = 100

# 100 separate connections (a new one per request, so each is routed on its own).
CLIENT = """
import http.client, json, sys
marker, n = sys.argv[1], int(sys.argv[2])
seen, failures = {}, []
for i in range(n):
    try:
        c = http.client.HTTPConnection("%s", 80, timeout=5)
        c.request("GET", f"/{marker}/{i}")
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            failures.append(f"{i}: HTTP {r.status}")
            continue
        pod = json.loads(body)["pod"]
        seen[pod] = seen.get(pod, 0) + 1
    except Exception as exc:
        failures.append(f"{i}: {type(exc).__name__}: {exc}")
print(json.dumps({"seen": seen, "failures": failures}))
""" % VIP


@pytest.fixture(scope="module")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-optout", "ttopt") as lab:
        yield lab


def test_lab_reports_the_opted_out_pod_outside_the_mesh(lab):
    status = json.loads(lab.cli("lab", "status", "-o", "json").stdout)
    rows = {p["name"]: p for p in status["pods"]}
    assert (rows["cart-2"]["mesh"], rows["cart-2"]["enrolled"]) == (False, False), rows["cart-2"]
    assert (rows["cart-1"]["mesh"], rows["cart-1"]["enrolled"]) == (True, True), rows["cart-1"]
    assert lab.serving("a2") == {"shop/cart-1"}
    workloads = {w["uid"]: w for w in lab.ztunnel("a1", "/config_dump")["state"]["workloads"]}
    assert workloads["shop/cart-2"]["protocol"] == "TCP" and workloads["shop/cart-1"]["protocol"] == "HBONE"


def test_requests_through_the_vip_reach_the_opted_out_replica_in_plaintext(lab, tmp_path):
    cart1, cart2 = lab.ip("cart-1", "shop"), lab.ip("cart-2", "shop")
    marker = f"optout-{uuid.uuid4().hex}"
    before = metric_value(lab.metrics("a1"), "istio_tcp_connections_opened_total", reporter="source",
                          destination_workload="cart-2", connection_security_policy="unknown")
    cap = Capture(lab, tmp_path / "optout.pcap")
    res = lab.exec("client", "python3", "-c", CLIENT, marker, str(REQUESTS), namespace="shop", timeout=120)
    raw = cap.stop()
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["failures"] == [], f"{len(out['failures'])} of {REQUESTS} requests failed: {out['failures'][:5]}"
    assert sum(out["seen"].values()) == REQUESTS
    assert set(out["seen"]) == {"cart-1", "cart-2"}, f"both replicas serve the VIP, saw {out['seen']}"
    # cart-2 is reached in plaintext on its app port; cart-1 only over HBONE (15008)
    summary = cap.summary()
    assert marker.encode() in raw, "no plaintext request to the opted-out replica crossed the fabric"
    assert f"> {cart2}.8080:" in summary, "no connection to cart-2's app port on the fabric"
    assert f"> {cart1}.8080:" not in summary, "plaintext reached the enrolled replica"
    assert f"> {cart1}.15008:" in summary, "the enrolled replica was not reached over HBONE"
    assert f"> {cart2}.15008:" not in summary, "HBONE was attempted to the opted-out replica"
    after = metric_value(lab.metrics("a1"), "istio_tcp_connections_opened_total", reporter="source",
                         destination_workload="cart-2", connection_security_policy="unknown")
    assert after - before == out["seen"]["cart-2"], "ztunnel did not count the plaintext connections to cart-2"
