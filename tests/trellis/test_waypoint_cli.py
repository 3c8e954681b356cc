"""`trellis waypoint ...` and `trellis routes`: the YAML edits (pure) and the commands as a
user runs them (subprocess) against a config directory and a real admin HTTP server."""
import json
import os
import sys
from pathlib import Path

import trio
import yaml

from meshcore import admin
from meshcore.resources import WAYPOINT_LABEL, load_dir
from trellis import waypointconfig as wc
from trellis.waypointcli import route_rows

TRELLIS = [str(Path(sys.executable).parent / "trellis")]


# ---- pure edits --------------------------------------------------------------------------
def test_gateway_is_a_valid_waypoint_and_keeps_existing_annotations():
    from meshcore.resources.model import from_dict
    gw = wc.gateway("default", "waypoint", 2)
    r = from_dict(gw)
    assert r.spec.is_waypoint and [(x.name, x.port, x.protocol) for x in r.spec.listeners] == [("mesh", 15008, "HBONE")]
    assert wc.replicas_of(gw) == 2
    old = dict(gw, metadata=dict(gw["metadata"], labels={"team": "a"},
                                 annotations={"trellis.dev/replicas": "3", "note": "x"}))
    again = wc.gateway("default", "waypoint", None, old)
    assert again["metadata"]["annotations"] == {"trellis.dev/replicas": "3", "note": "x"}
    assert again["metadata"]["labels"] == {"team": "a"} and wc.replicas_of(again) == 3
    assert wc.replicas_of(wc.gateway("default", "waypoint", 4, old)) == 4


def test_enroll_and_unenroll_touch_only_our_label():
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "default", "labels": {"trellis.dev/dataplane-mode": "ambient"}}}
    on = wc.enroll("default", "waypoint", ns)
    assert on["metadata"]["labels"] == {"trellis.dev/dataplane-mode": "ambient", WAYPOINT_LABEL: "waypoint"}
    assert ns["metadata"]["labels"] == {"trellis.dev/dataplane-mode": "ambient"}   # not mutated
    assert wc.unenroll("other", on) is None   # names another waypoint: left alone
    off = wc.unenroll("waypoint", on)
    assert off["metadata"]["labels"] == {"trellis.dev/dataplane-mode": "ambient"}
    fresh = wc.enroll("prod", "wp", None)
    assert fresh == {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "prod", "labels": {WAYPOINT_LABEL: "wp"}}}
    assert "labels" not in wc.unenroll("wp", fresh)["metadata"]
    assert wc.unenroll("wp", None) is None


def test_route_rows_summarise_matches_backends_timeouts_retry_policies():
    data = {"routes": [{"parent": "default/web:80", "route": "default/web", "rule": 0,
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                                     "headers": [{"name": "x-canary", "value": "true"}],
                                     "queryParams": [{"name": "v", "type": "RegularExpression", "value": "2.*"}]}],
                        "backends": [{"name": "web-v1", "port": 80, "weight": 90}, {"name": "web-v2", "port": 80, "weight": 10}],
                        "timeouts": {"request": "10s", "backendRequest": "2s"},
                        "retry": {"attempts": 3, "codes": [503, 504], "backoff": "100ms"},
                        "policies": ["TrafficPolicy/web", {"kind": "RateLimitPolicy", "name": "web"}]}]}
    [row] = route_rows(data, "default/waypoint")
    assert row["matchesText"] == "PathPrefix /api GET x-canary=true ?v~2.*"
    assert row["backendsText"] == "web-v1:80=90,web-v2:80=10"
    assert row["timeoutsText"] == "request=10s,backendRequest=2s"
    assert row["retryText"] == "attempts=3 codes=503,504 backoff=100ms"
    assert row["policiesText"] == "TrafficPolicy/web,RateLimitPolicy/web"
    assert route_rows([{"parent": "p", "backends": []}], "w")[0]["matchesText"] == "*"


# ---- the commands ------------------------------------------------------------------------
async def trellis(*args):
    res = await trio.run_process([*TRELLIS, *args], capture_stdout=True, capture_stderr=True, check=False,
                                 env={**os.environ, "TRELLIS_LAB_DIR": "/nonexistent/wplab-test"})
    return res.returncode, res.stdout.decode(), res.stderr.decode()


async def test_apply_list_status_delete_on_a_config_dir(tmp_path):
    (tmp_path / "ns.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "default", "labels": {"trellis.dev/dataplane-mode": "ambient"}}}))
    d = ["--config-dir", str(tmp_path)]
    code, out, err = await trellis("waypoint", "apply", "-n", "default", "--enroll-namespace", *d)
    assert code == 0, err
    assert out.splitlines() == ["gateway/waypoint created", "namespace/default labeled"]
    loaded = load_dir(tmp_path)
    assert not loaded.errors
    ns = next(r for r in loaded.resources if r.kind == "Namespace")
    assert ns.labels == {"trellis.dev/dataplane-mode": "ambient", WAYPOINT_LABEL: "waypoint"}
    assert sum(r.kind == "Namespace" for r in loaded.resources) == 1   # edited in place, not duplicated
    code, out, _ = await trellis("waypoint", "apply", "-n", "default", "--replicas", "2", *d)
    assert code == 0 and out.strip() == "gateway/waypoint configured"
    code, out, _ = await trellis("waypoint", "list", *d)
    assert code == 0 and out.splitlines()[1].split() == ["default", "waypoint", "trellis-waypoint", "2", "namespace/default"]
    code, out, _ = await trellis("waypoint", "list", "-n", "prod", *d)
    assert code == 0 and out.strip() == "No resources found."
    code, out, _ = await trellis("waypoint", "list", "-A", "-o", "json", *d)
    assert code == 0 and [(w["name"], w["replicas"]) for w in json.loads(out)] == [("waypoint", 2)]
    code, out, _ = await trellis("waypoint", "status", "-o", "yaml", *d)
    st = yaml.safe_load(out)
    assert code == 0 and st[0]["desired"] == 2 and st[0]["ready"] == 0 and st[0]["pods"] == []
    code, out, _ = await trellis("waypoint", "delete", "-n", "default", *d)
    assert code == 0 and out.splitlines() == ["namespace/default unlabeled", "gateway/waypoint deleted"]
    left = load_dir(tmp_path).resources
    assert [r.kind for r in left] == ["Namespace"] and left[0].labels == {"trellis.dev/dataplane-mode": "ambient"}
    code, _, err = await trellis("waypoint", "delete", "-n", "default", *d)
    assert code == 1 and "not found" in err


async def test_usage_and_failure_exit_codes(tmp_path):
    code, _, err = await trellis("waypoint", "apply", "-n", "default", "--replicas", "0", "--config-dir", str(tmp_path))
    assert code == 2 and "--replicas" in err
    code, _, err = await trellis("waypoint", "list", "-n", "a", "-A", "--config-dir", str(tmp_path))
    assert code == 2 and "exclude" in err
    code, _, err = await trellis("waypoint", "apply", "-n", "Bad_NS", "--config-dir", str(tmp_path))
    assert code == 1 and "metadata.namespace" in err and list(tmp_path.iterdir()) == []
    code, _, err = await trellis("waypoint", "list")
    assert code == 1 and "no lab running" in err
    code, _, err = await trellis("routes")
    assert code == 1 and "no lab running" in err


async def test_routes_from_a_waypoint_admin_port(nursery):
    routes = [{"parent": "default/web:80", "route": "default/web",
               "matches": [{"path": {"type": "Exact", "value": "/"}}],
               "backends": [{"name": "web", "port": 80, "weight": 1}], "timeouts": {"request": "5s"}}]

    async def answer(req):
        return admin.Response({"routes": routes})
    listener = await nursery.start(admin.serve_http, "127.0.0.1", 0, {"/routes": answer})
    addr = f"127.0.0.1:{listener.socket.getsockname()[1]}"
    code, out, err = await trellis("routes", "--admin", addr)
    assert code == 0, err
    head, row = out.splitlines()
    assert head.split()[:3] == ["WAYPOINT", "PARENT", "ROUTE"]
    assert row.split() == [addr, "default/web:80", "default/web", "Exact", "/", "web:80=1", "request=5s", "-", "-", "*"]
    code, out, _ = await trellis("routes", "--admin", addr, "-o", "json")
    assert code == 0 and json.loads(out)[0]["backends"] == routes[0]["backends"]
    code, _, err = await trellis("routes", "--admin", "127.0.0.1:1")
    assert code == 1 and "connection refused" in err


def test_apply_waits_for_a_listed_replica_before_labelling(tmp_path):
    import click
    import pytest

    from trellis.lab.waypointplan import workload_entry
    from trellis.waypointcli import _wait_listed
    with pytest.raises(click.ClickException) as err:
        _wait_listed(tmp_path, "default", "waypoint", timeout=1)
    assert "no ready replica after 1s, so namespace/default was not labeled" in err.value.message
    entry = workload_entry({"name": "waypoint-0", "namespace": "default", "waypoint": "waypoint", "address": "10.244.1.9",
                            "serviceAccount": "waypoint", "node": "node1", "netns": "x"})
    (tmp_path / "lab-waypoints.yaml").write_text(yaml.safe_dump(entry))
    _wait_listed(tmp_path, "default", "waypoint", timeout=1)   # listed: returns at once


async def test_apply_is_idempotent_and_a_bad_name_names_the_option(tmp_path):
    d = ["--config-dir", str(tmp_path)]
    code, out, err = await trellis("waypoint", "apply", "-n", "default", "--enroll-namespace", *d)
    assert code == 0, err
    files = {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    code, out, err = await trellis("waypoint", "apply", "-n", "default", "--enroll-namespace", *d)
    assert code == 0 and out.splitlines() == ["gateway/waypoint unchanged", "namespace/default unchanged"], err
    assert {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == files
    code, out, _ = await trellis("waypoint", "list", "-o", "json", *d)
    assert [w["name"] for w in json.loads(out)] == ["waypoint"]
    code, _, err = await trellis("waypoint", "apply", "-n", "default", "--name", "Way_Point", *d)
    assert code == 1 and "--name: Gateway default/Way_Point: metadata.name: 'Way_Point' is not a valid name" in err


async def test_routes_says_why_a_namespace_has_none(tmp_path):
    """`routes -n NS`: no waypoint there is an empty answer with the reason (exit 0, as an
    empty kubectl list); a waypoint the lab runs no pod of cannot be asked (exit 1)."""
    state = tmp_path / "state"
    (state / "config").mkdir(parents=True)
    (state / "lab.json").write_text(json.dumps({"lab_dir": str(tmp_path), "prefix": "tt-routes"}))
    env = {"TRELLIS_LAB_DIR": str(state)}
    res = await trio.run_process([*TRELLIS, "routes", "-n", "legacy"], capture_stdout=True, capture_stderr=True,
                                 check=False, env={**os.environ, **env})
    assert res.returncode == 0 and res.stdout.decode().strip() == "No resources found."
    assert "no waypoint in namespace legacy" in res.stderr.decode()
    (state / "config" / "gw.yaml").write_text(yaml.safe_dump(wc.gateway("default", "waypoint")))
    res = await trio.run_process([*TRELLIS, "routes", "-n", "default"], capture_stdout=True, capture_stderr=True,
                                 check=False, env={**os.environ, **env})
    assert res.returncode == 1 and "waypoint default/waypoint has no pod running" in res.stderr.decode()


async def test_delete_warns_about_services_still_labeled_for_the_waypoint(tmp_path):
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default",
                                                               "labels": {WAYPOINT_LABEL: "waypoint"}},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(svc))
    d = ["--config-dir", str(tmp_path)]
    code, out, err = await trellis("waypoint", "apply", "-n", "default", *d)
    assert code == 0 and "note:" not in err, err   # the Service uses it already
    code, out, _ = await trellis("waypoint", "list", *d)
    assert out.splitlines()[1].split()[-1] == "service/web"
    code, out, err = await trellis("waypoint", "apply", "-n", "prod", *d)
    assert code == 0 and out.strip() == "gateway/waypoint created"
    assert "note: nothing uses waypoint prod/waypoint yet: --enroll-namespace" in err
    code, out, err = await trellis("waypoint", "delete", "-n", "default", *d)
    assert code == 0 and out.strip() == "gateway/waypoint deleted"
    assert "warning: service/web is still labeled trellis.dev/use-waypoint=waypoint" in err


async def test_delete_warns_that_http_rules_fail_closed_at_l4(tmp_path):
    """The README walk: l7.yaml's DENY /admin on Service/web stays after `waypoint delete`, and
    ztunnel then refused every connection to web (Istio's fail-closed rule): say so."""
    docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}},
            {"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "deny-admin", "namespace": "default"},
             "spec": {"targetRefs": [{"kind": "Service", "name": "web"}], "action": "DENY",
                      "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}},
            {"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "allow-sleep", "namespace": "default"},
             "spec": {"targetRefs": [{"kind": "Service", "name": "web"}],
                      "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/default/sa/sleep"]}}]}]}}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump_all(docs))
    d = ["--config-dir", str(tmp_path)]
    code, _, err = await trellis("waypoint", "apply", "-n", "default", "--enroll-namespace", *d)
    assert code == 0, err
    code, out, err = await trellis("waypoint", "delete", "-n", "default", *d)
    assert code == 0 and out.splitlines() == ["namespace/default unlabeled", "gateway/waypoint deleted"]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "authorizationpolicy/deny-admin has HTTP rules" in warnings[0], err
    assert "every connection is refused" in warnings[0]
