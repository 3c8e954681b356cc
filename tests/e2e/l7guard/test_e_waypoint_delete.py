"""`trellis waypoint delete` under traffic: three pods' loops run across it, HTTP/1.1 on a
kept-alive connection, HTTP/1.1 with a new connection per request, and gRPC on one channel
(HTTP/2), and not one request fails; before it
the app sees the waypoint as its caller and the HTTPRoute's header, after it the pods
themselves (the L4 path) and no header. Runs last: it removes the package's waypoint."""
import json
import time

from e2e.labctl import wait_until
from e2e.l7guard.guardlab import WEB

GRPC_V2 = "10.96.0.14"   # grpc-2 alone: it never fails, so any failure is the delete's

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-trellis-route, value: web}]}
    backendRefs: [{name: web, port: 80}]
"""


def echo(lab, pod: str) -> dict:
    return json.loads(lab.curl(pod, f"http://{WEB}/").stdout)


def test_waypoint_delete_returns_to_l4_without_a_failed_request(lab):
    wp_ip = lab.waypoint_pod()["address"]
    with lab.applied(ROUTE):
        wait_until(lambda: echo(lab, "client")["headers"].get("x-trellis-route") == "web",
                   "the HTTPRoute applied at the waypoint", timeout=30)
        kept = lab.start("watcher", "loop", f"http://{WEB}/", "--keepalive", "--duration", "9")
        fresh = lab.start("client", "loop", f"http://{WEB}/", "--duration", "9")
        grpc = lab.start("batch", "grpcloop", f"{GRPC_V2}:9090", "/trellis.lab.Echo/Say", "--duration", "9")
        for proc in (kept, fresh, grpc):
            lab.started(proc)
        time.sleep(3.0)
        lab.cli("waypoint", "delete", "-n", "default")
        kept, fresh, grpc = lab.result(kept), lab.result(fresh), lab.result(grpc)
    for who, pod, res in (("keep-alive", "watcher", kept), ("fresh", "client", fresh), ("grpc", "batch", grpc)):
        assert res["failures"] == [], (who, res["failures"][:5])
        # through the waypoint first, then straight from the pod, never back
        assert [c[0] for c in res["clients"]] == [wp_ip, lab.ip(pod)], (who, res["clients"])
        assert all(c[2] >= 20 for c in res["clients"]), (who, res["clients"])
    # the kept-alive client needed a new connection: the draining waypoint said close (and
    # says it after each answer on a new one while the client's ztunnel still sends it there:
    # the lab stops the waypoint as its ztunnels get the config without it, not after)
    assert kept["connections"] >= 2
    wait_until(lambda: not [p for p in lab.state()["pods"] if p.get("waypoint")], "the waypoint pod removed", timeout=30)
    after = echo(lab, "client")
    assert after["client"].startswith(lab.ip("client") + ":") and "x-trellis-route" not in after["headers"]
