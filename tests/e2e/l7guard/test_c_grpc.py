"""gRPC through a real waypoint (grpcio client in a pod, grpcio servers in pods): a GRPCRoute
on the grpc Service sends method Version to grpc-v2 and the rest of trellis.lab.Echo to
grpc-v1, whose server fails every other call with UNAVAILABLE. GRPCRoute has no retry field
(Gateway API v1); as in Istio, the waypoint's default retry policy retries UNAVAILABLE
(Envoy's retry_on unavailable), under the retry budget, so the client never sees it."""
from e2e.labctl import metric_value, wait_until
from e2e.l7guard.guardlab import GRPC

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 9090}]
  rules:
  - matches: [{method: {service: trellis.lab.Echo, method: Version}}]
    backendRefs: [{name: grpc-v2, port: 9090}]
  - matches: [{method: {service: trellis.lab.Echo}}]
    backendRefs: [{name: grpc-v1, port: 9090}]
"""


def test_grpc_method_routing_and_unavailable_retried(lab):
    with lab.applied(ROUTE):
        wait_until(lambda: [r["route"] for r in lab.service_routes("grpc")["routes"]] == ["GRPCRoute default/grpc"],
                   "the waypoint to apply GRPCRoute default/grpc", timeout=30)
        metrics = lab.waypoint_metrics()
        retries = metric_value(metrics, "trellis_waypoint_retries_total", reason="grpc-status 14")
        grpc_ok = metric_value(metrics, "istio_requests_total", request_protocol="grpc", response_code="200")
        say = lab.run("client", "grpc", f"{GRPC}:9090", "/trellis.lab.Echo/Say", "10")
        version = lab.run("client", "grpc", f"{GRPC}:9090", "/trellis.lab.Echo/Version", "5")
        other = lab.run("client", "grpc", f"{GRPC}:9090", "/other.Svc/Say", "1")
        metrics = lab.waypoint_metrics()
    # every Say answered by grpc-1, in order, although its server failed every other call
    assert say["errors"] == []
    assert [(r["pod"], r["method"], r["request"]) for r in say["replies"]] == \
        [("grpc-1", "/trellis.lab.Echo/Say", f"n{i}") for i in range(10)]
    calls = [r["call"] for r in say["replies"]]
    # grpc-1 counts its calls: 1 ok, 2 UNAVAILABLE + 3 ok, 4 UNAVAILABLE + 5 ok, ...
    assert calls == list(range(1, 20, 2)), calls
    assert metric_value(metrics, "trellis_waypoint_retries_total", reason="grpc-status 14") - retries == 9
    # the method match: Version only ever reached grpc-2
    assert version["errors"] == [] and {r["pod"] for r in version["replies"]} == {"grpc-2"}
    assert len(version["replies"]) == 5
    # a method no rule matches: no backend (HTTP 404, which gRPC reads as UNIMPLEMENTED)
    assert other["replies"] == [] and other["errors"][0][1] == "UNIMPLEMENTED"
    assert metric_value(metrics, "istio_requests_total", request_protocol="grpc", response_code="200") - grpc_ok == 15
