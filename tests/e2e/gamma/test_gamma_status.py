"""GAMMA in a real lab, as a user drives it: a consumer route changes what callers of its own
namespace get and nothing for the others; a backend in a third namespace answers 500 until a
ReferenceGrant opens it, and `trellis get` reports each state with the spec's conditions.
Real clients (curl in meshed pods), through ztunnel and the waypoint."""
import json

import yaml

from e2e.labctl import wait_until

WEB = "http://10.96.0.10/"
CONSUMER = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: tag-mine, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: mesh, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-consumer, value: client}]}}]
    backendRefs: [{name: web, namespace: mesh, port: 80}]
"""
PRODUCER = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /db}}]
    backendRefs: [{name: db, namespace: other, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"""
GRANT = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: routes-from-mesh, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}]
  to: [{group: "", kind: Service, name: db}]
"""


def answer(lab, namespace: str, url: str = WEB) -> tuple[int, dict, str]:
    """(status, lower-cased headers, body) of one GET from namespace's sleep pod."""
    res = lab.curl("sleep", url, "-i", namespace=namespace)
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def parent_conditions(lab, name: str, namespace: str) -> dict:
    obj = yaml.safe_load(lab.cli("get", "httproute", name, "-n", namespace, "-o", "yaml").stdout)
    [parent] = obj["status"]["parents"]
    assert parent["controllerName"] == "trellis.dev/waypoint-controller"
    return {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}


def test_consumer_route_applies_to_its_namespace_only(lab):
    lab.apply(CONSUMER)
    wait_until(lambda: answer(lab, "client")[1].get("x-consumer") == "client", "the consumer route applied")
    for _ in range(5):   # callers of other namespaces keep the Service as it is
        status, headers, body = answer(lab, "mesh")
        assert status == 200 and "x-consumer" not in headers and json.loads(body)["pod"] == "web"
    status, headers, body = answer(lab, "client")
    assert status == 200 and headers["x-consumer"] == "client" and json.loads(body)["pod"] == "web"
    assert parent_conditions(lab, "tag-mine", "client") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
        "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
    lab.delete(CONSUMER)


def test_backend_of_a_third_namespace_needs_a_reference_grant(lab):
    lab.apply(PRODUCER)
    wait_until(lambda: answer(lab, "mesh", WEB + "db")[0] == 500, "the route without its grant applied")
    status, _, body = answer(lab, "client", WEB + "db")
    assert status == 500 and "no ReferenceGrant" in body
    assert answer(lab, "client", WEB)[0] == 200            # the rest of the route works
    assert parent_conditions(lab, "web", "mesh")["ResolvedRefs"] == ("False", "RefNotPermitted")
    lab.apply(GRANT)
    wait_until(lambda: answer(lab, "client", WEB + "db")[0] == 200, "the grant applied")
    assert json.loads(answer(lab, "mesh", WEB + "db")[2])["pod"] == "db"
    assert parent_conditions(lab, "web", "mesh")["ResolvedRefs"] == ("True", "ResolvedRefs")
    gw = lab.cli("get", "gateway", "waypoint", "-n", "mesh", "-o", "json").stdout
    assert {c["type"]: c["status"] for c in json.loads(gw)["status"]["conditions"]} == {
        "Accepted": "True", "Programmed": "True"}
    lab.delete(GRANT)
    wait_until(lambda: answer(lab, "client", WEB + "db")[0] == 500, "the grant's removal applied")
    lab.delete(PRODUCER)
