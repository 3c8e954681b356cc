"""The node as a whole from worker reports: counters summed per series, pods merged."""
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ztunnel.aggregate import merge_pods, parse_counters, sum_counters


def exposition(opened: dict, gauge: float = 0.0) -> str:
    r = CollectorRegistry()
    c = Counter("istio_tcp_connections_opened", "opened", ["reporter", "source_workload"], registry=r)
    for (reporter, src), n in opened.items():
        c.labels(reporter=reporter, source_workload=src).inc(n)
    Gauge("trellis_config_version", "version", registry=r).set(gauge)
    return generate_latest(r).decode()


def value(families, name, **labels):
    fam = families[name.removesuffix("_total")]
    return sum(v for (s, lab), v in fam.series.items() if s == name and all(dict(lab)[k] == w for k, w in labels.items()))


def test_counters_sum_per_series_and_gauges_are_left_out():
    a = parse_counters(exposition({("source", "client"): 3, ("destination", "web"): 1}, gauge=7))
    b = parse_counters(exposition({("source", "client"): 4, ("source", "other"): 2}, gauge=7))
    total = sum_counters([a, b])
    assert "trellis_config_version" not in total   # the owner reports its own gauges
    assert value(total, "istio_tcp_connections_opened_total", reporter="source", source_workload="client") == 7
    assert value(total, "istio_tcp_connections_opened_total", reporter="source") == 9
    assert value(total, "istio_tcp_connections_opened_total", reporter="destination") == 1
    # the text format writes `_created` as a gauge family of its own: creation times are never summed
    assert not any(name.endswith("_created") for name in total)


def test_summing_is_associative_so_dead_workers_can_be_folded_in():
    reports = [parse_counters(exposition({("source", "c"): n})) for n in (1, 2, 5)]
    folded = sum_counters([sum_counters(reports[:2]), reports[2]])
    assert value(folded, "istio_tcp_connections_opened_total") == value(sum_counters(reports),
                                                                        "istio_tcp_connections_opened_total") == 8
    text = generate_latest(type("R", (), {"collect": lambda self: [f.metric() for f in folded.values()]})()).decode()
    assert 'istio_tcp_connections_opened_total{reporter="source",source_workload="c"} 8.0' in text


def test_a_pod_is_as_far_along_as_its_slowest_worker():
    owned = [{"uid": "ns/a", "address": "10.0.0.1"}, {"uid": "ns/b", "address": "10.0.0.2"}]
    reports = {0: [{"uid": "ns/a", "state": "serving", "activeConnections": 2},
                   {"uid": "ns/b", "state": "serving", "activeConnections": 0}],
               1: [{"uid": "ns/a", "state": "serving", "activeConnections": 3},
                   {"uid": "ns/b", "state": "waiting for certificate", "activeConnections": 0}]}
    a, b = merge_pods(owned, reports, 2)
    assert a["state"] == "serving" and a["activeConnections"] == 5 and a["address"] == "10.0.0.1"
    assert [w["activeConnections"] for w in a["workers"]] == [2, 3]
    assert b["state"] == "waiting for certificate"
    (a,) = merge_pods(owned[:1], {0: reports[0]}, 2)
    assert a["state"] == "not on worker 1 yet" and a["workers"][1]["state"] == "absent"
