"""The L4 mesh carries real traffic: Service VIPs across nodes, identities, passthrough."""
import json
import uuid

from e2e.labctl import metric_value, wait_until

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def test_curl_to_service_vip_reaches_endpoints_on_the_other_node(lab):
    seen = set()
    for _ in range(12):
        res = lab.curl("sleep", "http://10.96.0.10/hello")
        assert res.returncode == 0, res.stderr
        body = json.loads(res.stdout)
        assert body["path"] == "/hello"
        seen.add(body["pod"])
    assert seen == {"web-1", "web-2"}, f"load balancing across both endpoints, saw {seen}"


def test_the_app_sees_the_calling_pod_address_through_the_mesh(lab):
    """ztunnel inbound dials the app from the caller's pod IP (transparent socket in the
    destination pod's netns), as Istio ambient does, not from the destination's own IP."""
    for caller in ("sleep", "client2"):
        for url in ("http://10.96.0.10/who", f"http://{lab.ip('web-1')}:8080/who"):
            res = lab.curl(caller, url)
            assert res.returncode == 0, res.stderr
            body = json.loads(res.stdout)
            assert body["client"].split(":")[0] == lab.ip(caller), (caller, url, body)


def test_server_side_sees_the_client_spiffe_identity(lab):
    def opened():
        return metric_value(lab.metrics("node2"), "istio_tcp_connections_opened_total",
                            reporter="destination", source_principal=SLEEP,
                            connection_security_policy="mutual_tls")
    before = opened()
    res = lab.curl("sleep", "http://10.96.0.10/")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: opened() >= before + 1, "node2's ztunnel to count a connection from the sleep identity")


def test_passthrough_to_a_destination_outside_the_mesh_is_plaintext(lab):
    target = lab.ip("outside-2", "legacy")
    res = lab.curl("sleep", f"http://{target}:8080/pass")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["pod"] == "outside-2"
    # sent from the client pod's own address, not from the node
    assert body["client"].split(":")[0] == lab.ip("sleep")


def test_long_lived_tcp_connection_through_the_mesh_carries_bytes_both_ways(lab):
    marker = uuid.uuid4().hex
    script = ("import socket,sys\n"
              "s=socket.create_connection(('10.96.0.20',9000),timeout=5)\n"
              f"data=b'{marker}'*4096\n"
              "s.sendall(data); s.shutdown(socket.SHUT_WR)\n"
              "got=b''\n"
              "while True:\n"
              "    b=s.recv(65536)\n"
              "    if not b: break\n"
              "    got+=b\n"
              "print(len(got), got==data)\n")
    res = lab.exec("sleep", "python3", "-c", script)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(len(marker) * 4096), "True"]
