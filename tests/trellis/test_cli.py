"""The `trellis` commands end to end as a user runs them (a subprocess), against a real
admin HTTP server (meshcore.admin) answering in ztunnel's dump shapes."""
import json
import os
import sys
from pathlib import Path

import trio
import yaml

from meshcore import admin

TRELLIS = [str(Path(sys.executable).parent / "trellis")]

# shapes as ztunnel/app.py serves them: bare lists
WORKLOADS = [
    {"uid": "default/web-1", "address": "10.244.2.2", "serviceAccount": "web", "node": "node2",
     "identity": "spiffe://cluster.local/ns/default/sa/web", "protocol": "HBONE"},
    {"uid": "legacy/legacy", "address": "10.244.1.3", "serviceAccount": "legacy", "node": "node1",
     "protocol": "TCP"}]
PODS = [{"uid": "default/web-1", "address": "10.244.2.2", "identity": "spiffe://cluster.local/ns/default/sa/web",
         "state": "serving", "activeConnections": 2, "listeners": ["127.0.0.1:15001", "0.0.0.0:15008"]}]
DUMP = {"state": {"version": 7, "workloads": WORKLOADS, "services": [], "policies": []}, "pods": PODS}


async def _resp(body):
    return admin.Response(body)


async def serve(nursery):
    routes = {"/workloads": lambda r: _resp(WORKLOADS), "/config_dump": lambda r: _resp(DUMP),
              "/services": lambda r: _resp([]), "/pods": lambda r: _resp(PODS)}
    listener = await nursery.start(admin.serve_http, "127.0.0.1", 0, routes)
    return listener.socket.getsockname()[1]


async def trellis(*args, env=None):
    res = await trio.run_process([*TRELLIS, *args], capture_stdout=True, capture_stderr=True, check=False,
                                 env={**os.environ, **(env or {})})
    return res.returncode, res.stdout.decode(), res.stderr.decode()


async def test_workloads_table_json_yaml(nursery):
    port = await serve(nursery)
    code, out, _ = await trellis("workloads", "--admin", f"127.0.0.1:{port}")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ADDRESS", "NODE"]
    assert lines[1].split()[:3] == ["default/web-1", "10.244.2.2", "node2"] and "yes" in lines[1].split()
    code, out, _ = await trellis("workloads", "--admin", f"127.0.0.1:{port}", "-o", "json")
    assert code == 0 and [w["uid"] for w in json.loads(out)] == ["default/web-1", "legacy/legacy"]
    code, out, _ = await trellis("workloads", "--admin", f"127.0.0.1:{port}", "-o", "yaml")
    wl = yaml.safe_load(out)
    assert code == 0 and wl[1]["protocol"] == "TCP" and [w["enrolled"] for w in wl] == [True, False]
    code, out, _ = await trellis("pods", "--admin", f"127.0.0.1:{port}")
    assert code == 0 and out.splitlines()[1].split()[3:5] == ["serving", "2"]


async def test_empty_list_and_config_dump(nursery):
    port = await serve(nursery)
    code, out, _ = await trellis("services", "--admin", f"127.0.0.1:{port}")
    assert (code, out.strip()) == (0, "No resources found.")
    code, out, _ = await trellis("config-dump", "--admin", f"127.0.0.1:{port}")
    assert code == 0 and json.loads(out)["state"]["version"] == 7


async def test_missing_endpoint_and_unreachable_exit_1_with_advice(nursery):
    port = await serve(nursery)
    code, _, err = await trellis("certs", "--admin", f"127.0.0.1:{port}")
    assert code == 1 and "GET /certs answered 404" in err
    with trio.socket.socket() as s:   # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code, _, err = await trellis("policies", "--admin", f"127.0.0.1:{free}")
    assert code == 1 and "connection refused; is it running?" in err


async def test_usage_errors_exit_2(tmp_path):
    assert (await trellis("workloads", "-o", "xml"))[0] == 2
    assert (await trellis("config-dump", "--node", "n1", "--control-plane"))[0] == 2
    assert (await trellis("no-such-command"))[0] == 2
    code, _, err = await trellis("workloads", "--admin", "nohostport")
    assert code == 1 and "expected HOST:PORT" in err


async def test_no_lab_is_clear(tmp_path):
    env = {"TRELLIS_LAB_DIR": str(tmp_path / "state"), "TRELLIS_LAB_PREFIX": "tt-lab-none"}
    code, _, err = await trellis("workloads", env=env)
    assert code == 1 and "no lab running" in err and "--admin" in err
    code, out, _ = await trellis("lab", "down", env=env)
    assert code == 0 and "no lab running" in out
    code, _, err = await trellis("lab", "exec", "sleep", "--", "true", env=env)
    assert code == 1 and "no lab running" in err


async def test_lab_up_rejects_invalid_lab_naming_file_and_field(tmp_path):
    (tmp_path / "lab.yaml").write_text("apiVersion: trellis.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: [n1]\n"
                                       "  pods:\n    - {name: a, node: n2, command: [sleep, '1']}\n")
    env = {"TRELLIS_LAB_DIR": str(tmp_path / "state"), "TRELLIS_LAB_PREFIX": "tt-lab-inv"}
    code, _, err = await trellis("lab", "up", str(tmp_path), "--no-mesh", env=env)
    assert code == 1
    assert f"{tmp_path / 'lab.yaml'}: spec.pods[0].node: 'n2' is not one of spec.nodes (n1)" in err
    assert not (tmp_path / "state").exists()


async def test_validate_lab_dir_reports_lab_errors_one_per_line(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "examples" / "lab" / "lab.yaml").read_text().replace("node: node2", "node: node9")
    (tmp_path / "lab.yaml").write_text(text)
    code, out, _ = await trellis("validate", str(tmp_path))
    lines = [x for x in out.splitlines() if "node9" in x]
    assert code == 1 and len(lines) == 2
    assert lines[0] == (f"{tmp_path / 'lab.yaml'}: Lab: spec.pods[1].node: 'node9' is not one of spec.nodes "
                        f"(node1, node2); add it there or fix the pod")


def test_bench_is_a_plugin_loaded_only_when_asked_for():
    """`trellis bench` comes from an entry point: listed in --help and runnable, but the
    CLI module does not import the bench suite, nor does running another command."""
    import subprocess
    probe = ("import sys, trellis.cli as c; from click.testing import CliRunner; "
             "assert not [m for m in sys.modules if m == 'bench' or m.startswith('bench.')], 'bench imported'; "
             "r = CliRunner().invoke(c.cli, ['validate', '/nonexistent']); assert r.exit_code == 2, r.output; "
             "assert 'bench' not in sys.modules, 'another command imported bench'; "
             "r = CliRunner().invoke(c.cli, ['--help']); assert ' bench ' in r.output, r.output; "
             "r = CliRunner().invoke(c.cli, ['bench', '--help']); assert '--scenarios' in r.output, r.output")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
