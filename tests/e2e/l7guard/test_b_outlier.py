"""Outlier detection (TrafficPolicy) at a real waypoint: of the pool Service's two echo pods,
pool-b starts answering 503; after 3 consecutive failures the waypoint ejects it (exactly 3
requests reach it, counted by the app itself), /clusters shows the ejection, it gets nothing
while ejected even once healthy again, and it is sent traffic again when the ejection time
is over."""
from e2e.labctl import metric_value, wait_until
from e2e.l7guard.guardlab import POOL

EJECTION_S = 12
POLICY = f"""apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: pool, namespace: default}}
spec:
  targetRefs: [{{kind: Service, name: pool}}]
  loadBalancer: {{simple: ROUND_ROBIN}}
  outlierDetection: {{consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: {EJECTION_S}s, maxEjectionPercent: 50}}
"""


def endpoint(lab, pod: str) -> dict:
    [pool] = [c for c in lab.waypoint_admin("/clusters") if c["service"] == "default/pool"]
    [ep] = [e for e in pool["endpoints"].values() if e["workload"] == f"default/{pod}"]
    return ep


def loop(lab, seconds: float) -> dict:
    return lab.run("client", "loop", f"http://{POOL}/", "--keepalive", "--duration", str(seconds))


def test_a_failing_endpoint_is_ejected_and_comes_back(lab):
    with lab.applied(POLICY):
        wait_until(lambda: lab.service_routes("pool")["trafficPolicy"] == "default/pool",
                   "the waypoint to apply TrafficPolicy default/pool", timeout=30)
        assert not endpoint(lab, "pool-b")["ejected"]
        ejections = metric_value(lab.waypoint_metrics(), "trellis_waypoint_outlier_ejections_total")
        start = lab.knobs("pool-b", fail_status=503)
        try:
            failing = loop(lab, 2)
        finally:
            during = lab.knobs("pool-b", fail_status=0)
        # round robin sent pool-b every other request until 3 failed in a row, then nothing:
        # the client saw exactly those 3 (503 is not retried without a retry stanza)
        assert during["requests"] - start["requests"] == 3 and during["failed"] - start["failed"] == 3
        assert failing["statuses"]["503"] == 3 and failing["statuses"]["200"] >= 20, failing["statuses"]
        assert failing["pods"] == {"pool-a": failing["statuses"]["200"]}
        ep = endpoint(lab, "pool-b")
        assert ep["ejected"] and ep["ejections"] == 1 and 0 < ep["ejected_for_s"] <= EJECTION_S, ep
        assert not endpoint(lab, "pool-a")["ejected"]
        assert metric_value(lab.waypoint_metrics(), "trellis_waypoint_outlier_ejections_total") == ejections + 1

        # healthy again, but still ejected: it gets nothing until the ejection time is over
        healed = loop(lab, 1)
        assert endpoint(lab, "pool-b")["ejected"], "the ejection ended before the check: the machine is too slow"
        assert healed["failures"] == [] and set(healed["pods"]) == {"pool-a"}
        assert lab.knobs("pool-b")["requests"] == during["requests"]

        wait_until(lambda: not endpoint(lab, "pool-b")["ejected"], "pool-b's ejection to end", timeout=EJECTION_S + 5)
        back = loop(lab, 1.5)
        assert back["failures"] == [] and back["pods"].get("pool-b", 0) >= 5, back["pods"]
        assert lab.knobs("pool-b")["requests"] - during["requests"] == back["pods"]["pool-b"]
