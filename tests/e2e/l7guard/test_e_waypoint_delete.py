"""`trellis waypoint delete` under traffic: two pods' loops run across it, one on a kept-alive
connection and one with a new connection per request, and not one request fails; before it
the app sees the waypoint as its caller and the HTTPRoute's header, after it the pods
themselves (the L4 path) and no header. Runs last: it removes the package's waypoint."""
import json
import time

from e2e.labctl import wait_until
from e2e.l7guard.guardlab import WEB

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
        time.sleep(3.0)
        lab.cli("waypoint", "delete", "-n", "default")
        kept, fresh = lab.result(kept), lab.result(fresh)
    for who, pod, res in (("keep-alive", "watcher", kept), ("fresh", "client", fresh)):
        assert res["failures"] == [], (who, res["failures"][:5])
        # through the waypoint first, then straight from the pod, never back
        assert [c[0] for c in res["clients"]] == [wp_ip, lab.ip(pod)], (who, res["clients"])
        assert all(c[2] >= 20 for c in res["clients"]), (who, res["clients"])
    # the kept-alive client needed one new connection: the draining waypoint said close
    assert kept["connections"] == 2
    wait_until(lambda: not [p for p in lab.state()["pods"] if p.get("waypoint")], "the waypoint pod removed", timeout=30)
    after = echo(lab, "client")
    assert after["client"].startswith(lab.ip("client") + ":") and "x-trellis-route" not in after["headers"]
