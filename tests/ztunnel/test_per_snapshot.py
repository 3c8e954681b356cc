"""What a new connection no longer recomputes: per-snapshot pod views, cached label sets and
metric series, and the original destination in one bpf(2) call (all pure or root-only maps)."""
from __future__ import annotations

import os

from meshcore import authz
from meshcore.state import State
from meshcore.telemetry import ConnLabels
from ztunnel import origdst, route
from ztunnel.inbound import CACHE_ENTRIES, Inbound
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.outbound import _labels
from ztunnel.podinfo import PodInfo

from zt_helpers import pol, rule, svc, wl

TD = "spiffe://cluster.local"
CLIENT = f"{TD}/ns/default/sa/client"


def _state(*policies) -> State:
    return State(workloads=[wl("client", "10.244.1.2"), wl("web", "10.244.2.3")], services=[svc("web", "10.96.0.10")],
                 enrolled_namespaces=frozenset({"default"}), policies=list(policies))


def _inbound(current: list[State]) -> Inbound:
    inputs = ProxyInputs(state=lambda: current[0], certs=None, metrics=Metrics(), origdst_fd=lambda: None)  # type: ignore[arg-type]
    return Inbound(PodInfo("default", "web", "10.244.2.3", "web", -1), inputs)


def test_the_pod_view_is_built_once_per_snapshot_and_follows_a_new_one():
    only_8080 = pol("only-8080", selector={"app": "web"}, rules=[rule(ports=[8080])])
    current = [_state(only_8080)]
    inbound = _inbound(current)
    view = inbound.view()
    assert inbound.view() is view and view.service == "default/web" and view.workload.name == "web"
    assert isinstance(view.decide(CLIENT, 8080), authz.Allow)
    assert isinstance(view.decide(CLIENT, 22), authz.Deny)
    assert view.decide(CLIENT, 22) is view.decisions[(CLIENT, 22, None)]   # remembered for the snapshot
    a, origin = inbound.caller(view, CLIENT, "10.244.1.2")
    assert inbound.caller(view, CLIENT, "10.244.1.2")[0] is a and a.source_workload == "client"
    assert origin == ("10.244.1.2", "verified")
    assert inbound.caller(view, f"{TD}/ns/default/sa/web", "10.244.1.2")[1][0] is None   # not who it says
    assert a.destination_service == "default/web" and a.destination_principal == f"{TD}/ns/default/sa/web"

    # a new snapshot (the policy gone) is a new view: nothing stale survives
    current[0] = _state()
    fresh = inbound.view()
    assert fresh is not view and isinstance(fresh.decide(CLIENT, 22), authz.Allow) and not fresh.callers


def test_the_view_caches_are_bounded():
    current = [_state()]
    view = _inbound(current).view()
    for port in range(1, CACHE_ENTRIES + 2):
        view.decide(CLIENT, port)
    assert 0 < len(view.decisions) <= CACHE_ENTRIES


def test_outbound_label_sets_are_shared_per_destination():
    pod = PodInfo("default", "client", "10.244.1.2", "client", -1)
    state = _state()
    r = route.decide(state, state.workload_by_uid("default/client"), ("10.96.0.10", 80))
    cache: dict = {}
    a, b = _labels(pod, r, True, cache), _labels(pod, r, True, cache)
    assert a is b and a.destination_workload == "web" and a.destination_service == "default/web"
    assert _labels(pod, r, False, cache).destination_principal == "unknown"   # secure is part of the key
    refuse = route.Refuse("no", service="default/x")
    assert _labels(pod, refuse, False, cache).destination_workload == "unknown"


def test_metric_series_are_looked_up_once_per_label_set():
    m = Metrics()
    labels = ConnLabels("source", source_workload="client", destination_service="default/web")
    for _ in range(3):
        m.connection_opened(labels)
        m.connection_closed(labels, 10, 20)
    m.connection_opened(ConnLabels("source", source_workload="client", destination_service="default/web"))
    assert len(m._children) == 1
    assert m.value("istio_tcp_connections_opened_total", destination_service="default/web") == 4
    assert m.value("istio_tcp_received_bytes_total", source_workload="client") == 30
    assert m.value("istio_tcp_sent_bytes_total", source_workload="client") == 60


def test_origdst_take_in_one_call_and_with_the_older_kernels_two():
    fd = origdst.create_origdst_map(1024)
    try:
        origdst.put(fd, 42, 40000, "10.96.0.10", 80)
        assert origdst.take(fd, 42, 40000) == ("10.96.0.10", 80)
        assert origdst._Take.atomic, "this kernel has BPF_MAP_LOOKUP_AND_DELETE_ELEM for hash maps"
        assert origdst.take(fd, 42, 40000) is None
        origdst._Take.atomic = False   # as after a kernel that refused it: lookup, then delete
        origdst.put(fd, 42, 40001, "fd00::1", 8080)
        assert origdst.take(fd, 42, 40001) == ("fd00::1", 8080)
        assert origdst.take(fd, 42, 40001) is None
    finally:
        origdst._Take.atomic = True
        os.close(fd)
