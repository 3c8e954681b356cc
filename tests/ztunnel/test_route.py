import pytest

from ztunnel import route
from ztunnel.route import Hbone, Plaintext, Refuse

from zt_helpers import mesh

STATE = mesh()
CLIENT = STATE.workload_by_uid("default/client")
TD = "spiffe://cluster.local"


def pick_last(service, endpoints):
    return endpoints[-1]


CASES = [
    # (orig_dst, pick, expected type, expected fields)
    (("10.96.0.10", 80), route.first, Hbone, dict(endpoint_ip="10.244.1.3", target_port=8080,
                                                    expected_identity=f"{TD}/ns/default/sa/web", service="default/web")),
    (("10.96.0.10", 80), pick_last, Hbone, dict(endpoint_ip="10.244.2.3", target_port=8080)),
    (("10.96.0.10", 443), route.first, Hbone, dict(target_port=8443, authority="10.244.1.3:8443")),
    (("10.96.0.10", 443), route.first, Hbone, dict(hbone_address=("10.244.1.3", 15008))),
    (("10.96.0.11", 5432), route.first, Hbone, dict(endpoint_ip="10.244.2.4", target_port=5432,
                                                     expected_identity=f"{TD}/ns/default/sa/db")),
    (("10.96.0.10", 81), route.first, Refuse, dict(service="default/web")),
    (("10.96.0.13", 80), route.first, Refuse, dict(reason="no healthy endpoints for service default/empty")),
    (("10.96.0.12", 80), route.first, Plaintext, dict(ip="10.244.2.9", port=8080, service="legacy/old")),
    (("10.244.1.3", 8080), route.first, Hbone, dict(endpoint_ip="10.244.1.3", target_port=8080, service=None,
                                                     authority="10.244.1.3:8080")),
    (("10.244.2.4", 9000), route.first, Hbone, dict(expected_identity=f"{TD}/ns/default/sa/db")),
    (("10.244.2.10", 80), route.first, Hbone, dict(expected_identity=f"{TD}/ns/shop/sa/cart")),
    (("10.244.2.9", 80), route.first, Plaintext, dict(ip="10.244.2.9", port=80)),
    (("1.1.1.1", 443), route.first, Plaintext, dict(ip="1.1.1.1", port=443)),
    (("10.96.0.99", 80), route.first, Plaintext, dict(ip="10.96.0.99")),
    (("10.244.1.2", 80), route.first, Plaintext, dict(ip="10.244.1.2")),
    (("fd00::1", 80), route.first, Plaintext, dict(ip="fd00::1", port=80)),
    (("10.96.0.10", 80), route.first, Hbone, dict(destination=STATE.workload_by_uid("default/web-1"))),
    (("10.96.0.12", 80), route.first, Plaintext, dict(destination=STATE.workload_by_uid("legacy/old"))),
    (("10.96.0.11", 80), route.first, Refuse, dict(reason="service default/db has no port 80 (ports: 5432)")),
    (("10.96.0.13", 80), route.first, Refuse, dict(service="default/empty")),
    (("10.244.1.3", 15008), route.first, Hbone, dict(target_port=15008)),
    (("10.244.2.3", 8443), route.first, Hbone, dict(expected_identity=f"{TD}/ns/default/sa/web",
                                                     authority="10.244.2.3:8443")),
    (("10.244.2.9", 5432), route.first, Plaintext, dict(service=None)),
    (("0.0.0.0", 80), route.first, Plaintext, dict(ip="0.0.0.0")),
    (("127.0.0.1", 8080), route.first, Plaintext, dict(ip="127.0.0.1", port=8080)),
]


@pytest.mark.parametrize("dst,pick,kind,fields", CASES)
def test_decide_table(dst, pick, kind, fields):
    r = route.decide(STATE, CLIENT, dst, pick)
    assert isinstance(r, kind), r
    for k, v in fields.items():
        assert getattr(r, k) == v, (k, r)


def test_hbone_destination_is_the_picked_workload():
    r = route.decide(STATE, CLIENT, ("10.96.0.10", 80), pick_last)
    assert r.destination.uid == "default/web-2"


def test_service_selector_does_not_cross_namespaces():
    # shop/other-ns carries app=web but must never back default/web.
    seen = {route.decide(STATE, CLIENT, ("10.96.0.10", 80), rr).destination.uid
            for rr in [route.RoundRobin()] for _ in range(6)}
    assert seen == {"default/web-1", "default/web-2"}


def test_round_robin_alternates_per_service():
    rr = route.RoundRobin()
    got = [route.decide(STATE, CLIENT, ("10.96.0.10", 80), rr).endpoint_ip for _ in range(4)]
    assert got == ["10.244.1.3", "10.244.2.3", "10.244.1.3", "10.244.2.3"]
    # another service keeps its own counter
    assert route.decide(STATE, CLIENT, ("10.96.0.11", 5432), rr).endpoint_ip == "10.244.2.4"
    assert route.decide(STATE, CLIENT, ("10.96.0.10", 80), rr).endpoint_ip == "10.244.1.3"


def test_refusal_reasons_read_like_advice():
    r = route.decide(STATE, CLIENT, ("10.96.0.10", 81), route.first)
    assert "service default/web has no port 81" in r.reason and "80, 443" in r.reason


def test_plaintext_reason_names_the_missing_label():
    r = route.decide(STATE, CLIENT, ("10.244.2.9", 80), route.first)
    assert "trellis.dev/dataplane-mode=ambient" in r.reason and "legacy/old" in r.reason


def test_ipv6_authority_is_bracketed():
    from meshcore.state import State
    from zt_helpers import wl
    s = State(workloads=[wl("v6", "fd00::5")], enrolled_namespaces=frozenset({"default"}))
    r = route.decide(s, None, ("fd00::5", 80))
    assert r.authority == "[fd00::5]:80" and r.hbone_address == ("fd00::5", 15008)


def test_no_source_workload_still_routes():
    assert isinstance(route.decide(STATE, None, ("10.96.0.10", 80)), Hbone)


def test_a_named_target_port_resolves_per_endpoint_as_kubernetes_does():
    """`targetPort: http` means each endpoint's own port named http (a Pod's container port,
    a WorkloadEntry's `ports`); endpoints without that name do not serve the Service port."""
    from dataclasses import replace
    from meshcore.state import ServicePort, State
    from zt_helpers import svc, wl
    workloads = [replace(wl("web-1", "10.244.1.3", sa="web", app="web"), ports={"http": 8081}),
                 replace(wl("web-2", "10.244.2.3", sa="web", app="web"), ports={"http": 9091}),
                 wl("web-3", "10.244.2.5", sa="web", app="web")]
    web = replace(svc("web", "10.96.0.10"), ports=(ServicePort(80, "http", name="http"),))
    nameless = replace(svc("old", "10.96.0.20", app="web"), ports=(ServicePort(80, "metrics"),))
    state = State(workloads=workloads, services=[web, nameless], enrolled_namespaces=frozenset({"default"}))
    first = route.decide(state, None, ("10.96.0.10", 80), route.first)
    last = route.decide(state, None, ("10.96.0.10", 80), pick_last)
    assert (first.endpoint_ip, first.target_port) == ("10.244.1.3", 8081)
    assert (last.endpoint_ip, last.target_port) == ("10.244.2.3", 9091), "web-3 has no port named http"
    refused = route.decide(state, None, ("10.96.0.20", 80), route.first)
    assert isinstance(refused, Refuse) and "no endpoint of service default/old has a port named 'metrics'" in refused.reason
