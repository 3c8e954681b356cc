"""Traffic through a real waypoint in a real lab: `trellis waypoint apply --enroll-namespace`
puts `python -m waypoint` in the path of the Service's traffic (ztunnel -> HBONE -> waypoint
-> HBONE -> ztunnel -> app), an HTTPRoute's filter and an L7 AuthorizationPolicy targeting
the Service take effect there, dialling the pod's IP does not escape the policy, and
`waypoint delete` returns the namespace to the L4 path.

Runs before test_waypoint_pods.py (file order), and leaves the lab as it found it."""
import json

from e2e.labctl import wait_until

VIP = "10.96.0.10"

ROUTE_AND_POLICY = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-trellis-route, value: web}]}
    backendRefs: [{name: web, port: 80}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-deny-admin, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"""


def code(lab, url):
    r = lab.curl("sleep", url, "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}")
    return r.stdout.strip()


def echo(lab, url):
    r = lab.curl("sleep", url)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None


def test_the_waypoint_routes_authorizes_and_cannot_be_bypassed(lab):
    sleep_ip, web_ip = lab.ip("sleep"), lab.ip("web-1")
    try:
        lab.apply_waypoint("default", timeout=60)
        [wp] = [p for p in lab.state()["pods"] if p.get("waypoint") == "waypoint" and p["namespace"] == "default"]
        lab.apply(ROUTE_AND_POLICY)
        # the route's filter shows the request went through the waypoint's routing
        seen = wait_until(lambda: (d := echo(lab, f"http://{VIP}/hi")) and
                          d["headers"].get("x-trellis-route") == "web" and d,
                          "a request through the VIP to be routed by the waypoint", timeout=60)
        # the app's caller is the waypoint (it re-originated HBONE as itself), not sleep
        assert seen["client"].rsplit(":", 1)[0] == wp["address"] != sleep_ip
        assert seen["path"] == "/hi"
        # L7 DENY at the waypoint, after path normalisation; escaped slashes refused
        for path in ("/admin", "//admin", "/./admin", "/%61dmin", "/admin/users"):
            assert code(lab, f"http://{VIP}{path}") == "403", path
        assert code(lab, f"http://{VIP}/a%2Fb") == "400"
        assert code(lab, f"http://{VIP}/public") == "200"
        # dialling the pod's IP goes through the waypoint too: the Service's policy holds,
        # its routes do not (GAMMA: routes belong to the Service address)
        assert code(lab, f"http://{web_ip}:8080/admin") == "403"
        direct = echo(lab, f"http://{web_ip}:8080/hi")
        assert direct and "x-trellis-route" not in direct["headers"]
        assert direct["client"].rsplit(":", 1)[0] == wp["address"]
    finally:   # whatever got applied (a failure above may have come first)
        for doc in ROUTE_AND_POLICY.split("---"):
            lab.cli("lab", "delete", "-f", "/dev/stdin", input=doc, check=False)
        lab.cli("waypoint", "delete", "-n", "default", check=False)
    # back on the L4 path: the app sees sleep itself again, and nothing is denied
    back = wait_until(lambda: (d := echo(lab, f"http://{VIP}/admin")) and
                      d["client"].rsplit(":", 1)[0] == sleep_ip and d,
                      "the namespace back on the L4 path", timeout=60)
    assert "x-trellis-route" not in back["headers"]
