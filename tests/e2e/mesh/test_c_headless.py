"""Headless (clusterIP: None) and ExternalName Services in a running mesh: they load (no
config error), the headless Service's pods stay reachable by pod IP through the mesh, and an
AuthorizationPolicy that targets the headless Service holds at its pods (Istio ambient: a
headless Service's pods are its endpoints for policy)."""
import json

from e2e.labctl import wait_until

SERVICES = """apiVersion: v1
kind: Service
metadata: {name: web-pods, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: default}
spec: {type: ExternalName, externalName: api.payments.example.com}
"""
DENY_SLEEP = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-pods-deny-sleep, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web-pods}]
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
"""


def _services(lab, node):
    return {s["name"]: s for s in lab.ztunnel(node, "/config_dump")["state"]["services"]}


def test_a_headless_services_pods_are_reachable_by_pod_ip_and_its_policy_holds(lab):
    lab.apply(SERVICES)
    try:
        svc = wait_until(lambda: _services(lab, "node2").get("default/web-pods"),
                         "node2's ztunnel to have the headless Service")
        assert svc["clusterIP"] == "None" and sorted(svc["endpoints"]) == ["default/web-1", "default/web-2"]
        assert "default/payments" not in _services(lab, "node2")   # ExternalName: nothing for the data path
        rows = [line.split() for line in lab.cli("get", "svc", "-n", "default").stdout.splitlines()]
        assert ["default", "web-pods", "ClusterIP", "None", "<none>", "8080/TCP"] in rows
        assert ["default", "payments", "ExternalName", "<none>", "api.payments.example.com", "<none>"] in rows
        web1, web2 = lab.ip("web-1"), lab.ip("web-2")
        for caller in ("sleep", "client2"):   # STRICT: only the mesh (HBONE) reaches them
            res = lab.curl(caller, f"http://{web1}:8080/pod-ip")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["client"].split(":")[0] == lab.ip(caller)
        lab.apply(DENY_SLEEP)
        try:
            wait_until(lambda: lab.curl("sleep", f"http://{web1}:8080/").returncode != 0,
                       "the headless Service's DENY policy to reach node2's ztunnel")
            for ip in (web1, web2):   # every pod the headless Service selects, not just one
                assert lab.curl("sleep", f"http://{ip}:8080/").returncode != 0
                ok = lab.curl("client2", f"http://{ip}:8080/")
                assert ok.returncode == 0, ok.stderr
        finally:
            lab.delete(DENY_SLEEP)
        wait_until(lambda: lab.curl("sleep", f"http://{web1}:8080/").returncode == 0, "the DENY policy to go away")
        assert lab.curl("sleep", "http://10.96.0.10/").returncode == 0   # the ClusterIP Service: unchanged
    finally:
        lab.delete(SERVICES)
    wait_until(lambda: "default/web-pods" not in _services(lab, "node2"), "the headless Service to go away")
