"""`trellis get`: Gateway API objects of a config directory with the status the control plane
computes (the same function it writes through the status subresource in a cluster)."""
import yaml
from click.testing import CliRunner

from trellis.cli import cli

CONFIG = """\
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {trellis.dev/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: other}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80, targetPort: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80, weight: 90}, {name: db, namespace: other, port: 80, weight: 10}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo}]}]
"""
GRANT = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-mesh, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}]
  to: [{group: "", kind: Service, name: db}]
"""


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_get_httproute_yaml_has_status_parents_like_kubectl(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    res = run("get", "httproute", "echo", "-n", "mesh", "--config-dir", str(tmp_path), "-o", "yaml")
    assert res.exit_code == 0, res.output
    obj = yaml.safe_load(res.output)
    [parent] = obj["status"]["parents"]
    assert parent["controllerName"] == "trellis.dev/waypoint-controller"
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "echo", "port": 80}
    got = {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}
    assert got == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted"),
                   "ResolvedWaypoints": ("True", "ResolvedWaypoints")}
    (tmp_path / "grant.yaml").write_text(GRANT)
    obj = yaml.safe_load(run("get", "httproute", "echo", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert obj["status"]["parents"][0]["conditions"][1]["status"] == "True"


def test_get_table_lists_invalid_routes_and_gateways(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    res = run("get", "httproutes", "--config-dir", str(tmp_path))
    lines = res.output.splitlines()
    assert lines[0].split()[:5] == ["NAMESPACE", "NAME", "PARENT", "ACCEPTED", "RESOLVED-REFS"]
    broken = next(l for l in lines if " broken " in l)
    assert "False (UnsupportedValue)" in broken and "Must have port for Service reference" in broken
    gw = run("get", "gtw", "--config-dir", str(tmp_path)).output
    assert "False (Pending)" in gw and "no waypoint replica is running yet" in gw
    missing = run("get", "httproute", "nope", "--config-dir", str(tmp_path))
    assert missing.exit_code == 1 and 'httproute "nope" not found' in missing.output


def _times(obj: dict) -> set[str]:
    st = obj["status"]
    conds = [c for p in st.get("parents") or [] for c in p["conditions"]] + list(st.get("conditions") or [])
    conds += [c for x in st.get("listeners") or [] for c in x["conditions"]]
    return {c["lastTransitionTime"] for c in conds}


def test_last_transition_time_is_the_config_change_not_the_command(tmp_path):
    import os
    (tmp_path / "c.yaml").write_text(CONFIG)
    os.utime(tmp_path / "c.yaml", (1_780_000_000, 1_780_000_000))
    os.utime(tmp_path, (1_780_000_000, 1_780_000_000))
    first = yaml.safe_load(run("get", "httproute", "echo", "-n", "mesh", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert _times(first) == {"2026-05-28T20:26:40Z"}
    again = yaml.safe_load(run("get", "httproute", "echo", "-n", "mesh", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert again == first                                   # the same on every get
    (tmp_path / "grant.yaml").write_text(GRANT)              # the config changes: so may the status
    os.utime(tmp_path / "grant.yaml", (1_780_000_600, 1_780_000_600))
    os.utime(tmp_path, (1_780_000_600, 1_780_000_600))
    later = yaml.safe_load(run("get", "httproute", "echo", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert _times(later) == {"2026-05-28T20:36:40Z"}
    (tmp_path / "grant.yaml").unlink()                       # a file removed moves it too (its directory)
    os.utime(tmp_path, (1_780_001_200, 1_780_001_200))
    gone = yaml.safe_load(run("get", "httproute", "echo", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert _times(gone) == {"2026-05-28T20:46:40Z"}


def test_waypoint_gateway_reports_its_listeners(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    gw = yaml.safe_load(run("get", "gateway", "waypoint", "-n", "mesh", "--config-dir", str(tmp_path), "-o", "yaml").output)
    [listener] = gw["status"]["listeners"]
    assert listener["name"] == "mesh" and listener["supportedKinds"] == [] and listener["attachedRoutes"] == 0
    got = {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in listener["conditions"]}
    assert got == {"Accepted": ("True", "Accepted", 1), "Programmed": ("False", "Pending", 1),
                   "ResolvedRefs": ("True", "ResolvedRefs", 1), "Conflicted": ("False", "NoConflicts", 1)}


def test_json_and_yaml_print_a_list_like_kubectl_and_the_bare_object_by_name(tmp_path):
    import json
    (tmp_path / "c.yaml").write_text(CONFIG)
    listed = json.loads(run("get", "httproute", "--config-dir", str(tmp_path), "-o", "json").output)
    assert list(listed) == ["apiVersion", "items", "kind", "metadata"]   # kubectl's key order
    assert (listed["apiVersion"], listed["kind"], listed["metadata"]) == ("v1", "List", {"resourceVersion": ""})
    assert [(i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [("HTTPRoute", "broken"),
                                                                           ("HTTPRoute", "echo")]
    assert all("status" in i for i in listed["items"])
    as_yaml = yaml.safe_load(run("get", "httproutes", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert as_yaml == listed
    # no object: still a List, as `kubectl get httproute -o json` in an empty namespace
    empty = yaml.safe_load(run("get", "grpcroute", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert empty == {"apiVersion": "v1", "items": [], "kind": "List", "metadata": {"resourceVersion": ""}}
    one = json.loads(run("get", "httproute", "echo", "--config-dir", str(tmp_path), "-o", "json").output)
    assert one["kind"] == "HTTPRoute" and one["metadata"]["name"] == "echo"


SERVICES = """\
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: other}
spec: {clusterIP: None, selector: {app: pg}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: other}
spec: {type: ExternalName, externalName: api.payments.example.com}
"""


def test_get_services_shows_none_for_headless_and_the_alias_for_external_name(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG + SERVICES)
    res = run("get", "svc", "-n", "other", "--config-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()]
    assert rows == [["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
                    ["other", "db", "ClusterIP", "10.96.0.12", "<none>", "80/TCP"],
                    ["other", "payments", "ExternalName", "<none>", "api.payments.example.com", "<none>"],
                    ["other", "pg", "ClusterIP", "None", "<none>", "5432/TCP"]]
    pg = yaml.safe_load(run("get", "service", "pg", "--config-dir", str(tmp_path), "-o", "yaml").output)
    assert pg["spec"]["clusterIP"] == "None" and pg["kind"] == "Service"
