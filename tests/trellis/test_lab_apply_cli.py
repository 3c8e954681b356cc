"""`trellis lab apply/delete -f` and `trellis validate` as a user runs them (a subprocess),
kubectl's habits: -f takes a file, a directory or - (stdin); re-applying the same objects
says `unchanged` and rewrites nothing; nothing to apply is an error; what the control plane
would refuse across objects (a taken clusterIP) is refused before anything is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

from meshcore.resources import load_dir
from trellis.lab import liveconfig

TRELLIS = str(Path(sys.executable).parent / "trellis")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lab"
SVC = ("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
       "spec: {{clusterIP: {ip}, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n")


def trellis(*args, state: Path | None = None, stdin: str | None = None):
    env = dict(os.environ, TRELLIS_LAB_DIR=str(state or "/nonexistent/tt-apply"), TRELLIS_LAB_PREFIX="tt-apply")
    res = subprocess.run([TRELLIS, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
    return res.returncode, res.stdout, res.stderr


def fake_lab(tmp_path: Path) -> Path:
    """A state dir as `lab up` leaves it, as far as apply/delete read it: lab.json and config/."""
    state = tmp_path / "state"
    (state / "config").mkdir(parents=True)
    (state / "lab.json").write_text(json.dumps({"lab_dir": str(EXAMPLES), "prefix": "tt-apply"}))
    for f in (EXAMPLES / "config").glob("*.yaml"):
        (state / "config" / f.name).write_text(f.read_text())
    return state


def test_apply_from_a_file_then_again_is_unchanged_and_rewrites_nothing(tmp_path):
    state = fake_lab(tmp_path)
    code, out, err = trellis("lab", "apply", "-f", str(EXAMPLES / "l7.yaml"), state=state)
    assert code == 0, err
    assert out.splitlines()[:3] == ["service/web-v1 created", "service/web-v2 created", "httproute/web created"]
    mtimes = {f: f.stat().st_mtime_ns for f in (state / "config").glob("*.yaml")}
    code, out, err = trellis("lab", "apply", "-f", str(EXAMPLES / "l7.yaml"), state=state)
    assert code == 0, err
    assert {line.rsplit(" ", 1)[1] for line in out.splitlines()} == {"unchanged"}
    assert {f: f.stat().st_mtime_ns for f in (state / "config").glob("*.yaml")} == mtimes
    # the demo's own objects, from the directory they came from: all there already
    code, out, err = trellis("lab", "apply", "-f", str(EXAMPLES / "config"), state=state)
    assert code == 0 and "authorizationpolicy/web-allow-sleep unchanged" in out.splitlines(), (out, err)


def test_apply_and_delete_from_stdin(tmp_path):
    state = fake_lab(tmp_path)
    doc = SVC.format(name="web-canary", ip="10.96.0.77")
    code, out, err = trellis("lab", "apply", "-f", "-", state=state, stdin=doc)
    assert (code, out.strip()) == (0, "service/web-canary created"), err
    assert any(r.name == "web-canary" for r in load_dir(state / "config").resources)
    code, out, err = trellis("lab", "delete", "-f", "-", state=state, stdin=doc)
    assert (code, out.strip()) == (0, "service/web-canary deleted"), err
    code, _, err = trellis("lab", "delete", "-f", "-", state=state, stdin=doc)
    assert code == 1 and "service/web-canary not found" in err


def test_nothing_to_apply_is_an_error(tmp_path):
    state = fake_lab(tmp_path)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    code, _, err = trellis("lab", "apply", "-f", str(tmp_path / "empty.yaml"), state=state)
    assert code == 1 and "no objects passed to apply" in err


def test_a_taken_cluster_ip_is_refused_naming_both_and_nothing_is_written(tmp_path):
    state = fake_lab(tmp_path)
    before = sorted((state / "config").iterdir())
    f = tmp_path / "svc.yaml"
    f.write_text(SVC.format(name="web2", ip="10.96.0.10"))
    code, out, err = trellis("lab", "apply", "-f", str(f), state=state)
    assert code == 1 and out == ""
    assert f"{f}: Service default/web2: spec.clusterIP: 10.96.0.10 is already used by Service default/web" in err
    assert sorted((state / "config").iterdir()) == before
    # replacing the owner itself with the same address is no conflict
    f.write_text(SVC.format(name="web", ip="10.96.0.10"))
    code, out, err = trellis("lab", "apply", "-f", str(f), state=state)
    assert (code, out.strip()) == (0, "service/web configured"), err


def test_validate_a_file_and_the_cross_object_rules(tmp_path):
    code, out, _ = trellis("validate", str(EXAMPLES / "l7.yaml"))
    assert (code, out.strip()) == (0, "valid: 6 resource(s)")
    d = tmp_path / "config"
    d.mkdir()
    (d / "a.yaml").write_text(SVC.format(name="web", ip="10.96.0.10"))
    (d / "b.yaml").write_text(SVC.format(name="web2", ip="10.96.0.10"))
    code, out, _ = trellis("validate", str(d))
    assert code == 1
    assert out.strip() == f"{d / 'b.yaml'}: Service default/web2: spec.clusterIP: 10.96.0.10 is already used by Service default/web"


def test_a_kubernetes_mode_lab_refuses_edits_of_a_config_dir_nothing_reads(tmp_path):
    """`lab up --kubernetes`: the control plane reads the API server, so writing the config
    dir ('created', then nothing happens; `waypoint apply` waited 120 s for a replica that
    never came) is refused, saying how to change the lab instead."""
    state = fake_lab(tmp_path)
    (state / "lab.json").write_text(json.dumps({"lab_dir": str(EXAMPLES), "prefix": "tt-apply", "kubernetes": True}))
    before = sorted((state / "config").iterdir())
    for args in (["lab", "apply", "-f", str(EXAMPLES / "l7.yaml")], ["lab", "delete", "-f", str(EXAMPLES / "l7.yaml")],
                 ["waypoint", "apply", "-n", "default", "--enroll-namespace"], ["waypoint", "list"],
                 ["get", "httproute"]):
        code, out, err = trellis(*args, state=state)
        assert code == 1 and out == "", args
        assert "Kubernetes mode" in err and "tt-apply-fabric" in err and "/gateways" in err, (args, err)
    assert sorted((state / "config").iterdir()) == before
    code, out, err = trellis("waypoint", "apply", "-n", "default", "--config-dir", str(tmp_path), state=state)
    assert (code, out.strip()) == (0, "gateway/waypoint created"), err   # a directory named on purpose: fine
