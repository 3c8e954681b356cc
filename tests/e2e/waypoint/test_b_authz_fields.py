"""Istio's AuthorizationPolicy fields in a real lab: ipBlocks decided by the destination's
ztunnel against the real pod address of the caller (L4), then hosts, notPaths and a
`request.headers[...]` condition decided per request by a real waypoint (L7), which sees the
client pod's own address as source.ip. A policy relying on JWT is refused at apply time.

Runs between test_a_waypoint_traffic.py and test_waypoint_pods.py (file order) and leaves
the lab as it found it: no policy, no waypoint in default."""
import json

from e2e.labctl import wait_until

VIP = "10.96.0.10"


def l4_allow(block: str) -> str:
    return f"""apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-from-block, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{ipBlocks: ["{block}"]}}}}]}}]
"""


def l7_deny(sleep_ip: str) -> str:
    return f"""apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-deny-fields, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: web}}]
  action: DENY
  rules:
  - to: [{{operation: {{hosts: ["blocked.example", "blocked.example:*"]}}}}]
  - to: [{{operation: {{notPaths: ["/public", "/public/*"]}}}}]
    when: [{{key: "request.headers[X-Tenant]", values: ["guest*"]}}]
  - to: [{{operation: {{paths: ["/from-sleep"]}}}}]
    when: [{{key: source.ip, values: ["{sleep_ip}/32"]}}, {{key: destination.ip, values: ["{VIP}"]}}]
"""


JWT = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-jwt, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  rules: [{from: [{source: {requestPrincipals: ["issuer.example.com/*"]}}]}]
"""


def code(lab, path, *headers: str) -> str:
    extra = [a for h in headers for a in ("-H", h)]
    r = lab.curl("sleep", f"http://{VIP}{path}", "--path-as-is", *extra, "-o", "/dev/null", "-w", "%{http_code}")
    return r.stdout.strip() or f"curl exit {r.returncode}: {r.stderr.strip()}"


def echo(lab, url):
    r = lab.curl("sleep", url)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None


def test_ip_blocks_at_ztunnel_with_the_real_pod_address(lab):
    sleep_ip = lab.ip("sleep")
    try:
        lab.apply(l4_allow(f"{sleep_ip}/32"))
        # the ALLOW names sleep's address: it gets in (the policy reached node2's ztunnel when
        # the next one, which does not name it, starts refusing)
        assert wait_until(lambda: code(lab, "/") == "200", "sleep allowed by its own address")
        lab.apply(l4_allow("192.0.2.0/24"))
        wait_until(lambda: lab.curl("sleep", f"http://{VIP}/").returncode != 0,
                   "sleep refused once the ALLOW names another block")
        for _ in range(3):
            assert lab.curl("sleep", f"http://{VIP}/").returncode != 0
        lab.apply(l4_allow(sleep_ip.rsplit(".", 1)[0] + ".0/24"))   # a CIDR holding sleep's address
        wait_until(lambda: code(lab, "/") == "200", "sleep allowed again by a CIDR")
    finally:
        lab.cli("lab", "delete", "-f", "/dev/stdin", input=l4_allow("0.0.0.0/0"), check=False)
    wait_until(lambda: code(lab, "/") == "200", "the policy to go away")


def test_jwt_fields_are_refused_naming_the_field(lab):
    res = lab.cli("lab", "apply", "-f", "/dev/stdin", input=JWT, check=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "spec.rules[0].from[0].source.requestPrincipals" in out and "JWT" in out, out


def test_hosts_not_paths_and_header_conditions_at_the_waypoint(lab):
    sleep_ip = lab.ip("sleep")
    policy = l7_deny(sleep_ip)
    try:
        lab.apply_waypoint("default", timeout=60)
        lab.apply(policy)
        wait_until(lambda: code(lab, "/private", "X-Tenant: guest-1") == "403",
                   "the L7 policy to reach the waypoint", timeout=60)
        # the header condition with notPaths: a guest is refused outside /public only
        assert code(lab, "/private", "X-Tenant: guest-7") == "403"
        assert code(lab, "/public/a", "X-Tenant: guest-7") == "200"
        assert code(lab, "/public", "X-Tenant: guest-7") == "200"
        assert code(lab, "/private", "X-Tenant: member") == "200"
        assert code(lab, "/private") == "200"
        # normalisation runs first: a dot segment does not make /public/../private public
        assert code(lab, "/public/../private", "X-Tenant: guest") == "403"
        # hosts: case-insensitive, with or without a port (the policy lists both forms)
        assert code(lab, "/", "Host: blocked.example") == "403"
        assert code(lab, "/", "Host: BLOCKED.Example:80") == "403"
        assert code(lab, "/", "Host: other.example") == "200"
        # source.ip at the waypoint is the client pod's own address, destination.ip the VIP
        assert code(lab, "/from-sleep") == "403"
        direct = lab.curl("sleep", f"http://{lab.ip('web-1')}:8080/from-sleep", "-o", "/dev/null", "-w", "%{http_code}")
        assert direct.stdout.strip() == "200"   # dialled at the pod's IP: destination.ip is not the VIP
        assert (d := echo(lab, f"http://{VIP}/public/x")) and d["path"] == "/public/x"
    finally:
        lab.cli("lab", "delete", "-f", "/dev/stdin", input=policy, check=False)
        lab.cli("waypoint", "delete", "-n", "default", check=False)
    wait_until(lambda: (d := echo(lab, f"http://{VIP}/private")) and
               d["client"].rsplit(":", 1)[0] == sleep_ip, "the namespace back on the L4 path", timeout=60)
