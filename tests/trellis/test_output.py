"""Rendering (table/json/yaml) and the row shapes built from ztunnel's admin answers."""
import json

import pytest
import yaml

from trellis import inspect as insp
from trellis.lab.status import serving_uids
from trellis.output import cell, render, table

ROWS = [{"uid": "default/web-1", "address": "10.244.2.2", "labels": {"app": "web"}, "enrolled": True},
        {"uid": "legacy/legacy", "address": "10.244.1.3", "labels": {}, "enrolled": False, "extra": None}]
COLS = [("NAME", "uid"), ("ADDRESS", "address"), ("LABELS", "labels"), ("ENROLLED", "enrolled"), ("NODE", "node")]


def test_table_aligns_columns_and_marks_missing():
    lines = table(ROWS, COLS).splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "LABELS", "ENROLLED", "NODE"]
    assert lines[1].split() == ["default/web-1", "10.244.2.2", "app=web", "yes", "-"]
    assert lines[2].split() == ["legacy/legacy", "10.244.1.3", "-", "no", "-"]
    # every column starts at the same offset on every line
    assert lines[1].index("10.244.2.2") == lines[0].index("ADDRESS") == lines[2].index("10.244.1.3")


@pytest.mark.parametrize("value,text", [(None, "-"), ("", "-"), (True, "yes"), (False, "no"), (3, "3"),
                                        ({"b": 1, "a": 2}, "a=2,b=1"), (["x", 2], "x,2"), ([], "-")])
def test_cell(value, text):
    assert cell(value) == text


def test_json_and_yaml_round_trip_the_full_data():
    assert json.loads(render(ROWS, "json", COLS)) == ROWS
    assert yaml.safe_load(render(ROWS, "yaml", COLS)) == ROWS


def test_empty_table_says_so():
    assert render([], "table", COLS) == "No resources found."


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        render(ROWS, "xml", COLS)


@pytest.mark.parametrize("data,expected", [
    ([{"uid": "a/b", "state": "serving"}, {"uid": "a/c", "state": "starting"}, {"uid": "a/d", "state": "draining"}],
     {"a/b"}),
    ({"pods": [{"uid": "a/b", "state": "serving"}]}, {"a/b"}),
    ([{"state": "serving"}], set()),
    ({"pods": None}, set()),
    (["junk", 3], set()),
])
def test_serving_uids(data, expected):
    assert serving_uids(data) == expected


@pytest.mark.parametrize("text,ok", [("127.0.0.1:15000", ("127.0.0.1", 15000)), ("[::1]:15000", ("::1", 15000)),
                                     ("localhost", None), (":15000", None), ("h:99999", None), ("h:x", None)])
def test_parse_hostport(text, ok):
    if ok is None:
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            insp.parse_hostport(text)
    else:
        assert insp.parse_hostport(text) == ok


def test_row_shapes_follow_ztunnel_dumps():
    svc = insp.service_rows([{"name": "default/web", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                              "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                              "endpoints": ["default/web-1", "default/web-2"]}])
    line = table(svc, insp.SERVICE_COLUMNS).splitlines()[1].split()
    assert line[:4] == ["default/web", "10.96.0.10", "80->8080/TCP", "default/web-1,default/web-2"]
    pol = insp.policy_rows([{"namespace": "default", "name": "default/allow", "action": "ALLOW",
                             "selector": {"app": "web"}, "target_refs": [["Service", "web"]], "rules": [{}, {}]},
                            {"name": "default/ns-wide", "action": "DENY", "selector": None, "rules": []},
                            {"name": "default/web-only", "action": "ALLOW", "selector": None,
                             "target_refs": [["Service", "web"]], "rules": [{}]}])
    assert [(r["selectorText"], r["targetsText"], r["ruleCount"]) for r in pol] == [
        ("app=web", "Service/web", 2), ("(namespace)", "", 0), ("", "Service/web", 1)]   # targetRefs: not namespace-wide
    certs = insp.cert_rows([{"identity": "spiffe://td/ns/a/sa/b", "not_after": "2026-01-01T00:00:00Z"}])
    assert certs[0]["notAfter"] == "2026-01-01T00:00:00Z" and certs[0]["notBefore"] is None
    wl = insp.workload_rows([{"namespace": "a", "name": "b"}])
    assert (wl[0]["uid"], wl[0]["enrolled"]) == ("a/b", None)   # unknown without /pods


def test_workloads_from_several_nodes_keep_the_own_node_row():
    rows = [{"uid": "d/web", "node": "n2", "source": "ztunnel/n1"}, {"uid": "d/web", "node": "n2", "source": "ztunnel/n2"},
            {"uid": "d/vm", "node": "n3", "source": "ztunnel/n1"}]
    out = insp.workload_rows(rows, {"ztunnel/n1": set(), "ztunnel/n2": {"d/web"}})
    assert [(r["uid"], r["source"], r["enrolled"]) for r in out] == [("d/web", "ztunnel/n2", True),
                                                                      ("d/vm", "ztunnel/n1", False)]


def test_trellis_services_shows_a_headless_service_as_kubectl_does():
    from meshcore.resources import parse_documents
    from meshcore.state import State
    loaded = parse_documents("apiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: db}\n"
                             "spec: {clusterIP: None, selector: {app: pg}, ports: [{port: 5432}]}\n", "s.yaml")
    dump = State.from_resources(loaded.resources).dump()["services"]   # what ztunnel's /config_dump serves
    line = table(insp.service_rows(dump), insp.SERVICE_COLUMNS).splitlines()[1].split()
    assert line[:3] == ["db/pg", "None", "5432->5432/TCP"]
