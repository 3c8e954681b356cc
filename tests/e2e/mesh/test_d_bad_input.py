"""Bad input never kills a component, and every error names what is wrong."""
import json
import time

import pytest

from e2e.labctl import wait_until
from meshcore import admin

UNKNOWN_FIELD = """apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  clusterIP: 10.96.0.99
  selektor: {app: web}
  ports: [{port: 80}]
"""


def _cp_dump(lab):
    return admin.get_json("127.0.0.1", 15010, "/config_dump", netns=lab.fabric_netns())


def test_lab_apply_refuses_an_unknown_field_naming_file_object_and_field(lab, tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text(UNKNOWN_FIELD)
    res = lab.cli("lab", "apply", "-f", str(f), check=False)
    assert res.returncode == 1
    err = res.stdout + res.stderr
    assert "broken.yaml" in err and "Service default/broken" in err and "spec.selektor" in err, err


def test_malformed_yaml_in_the_config_dir_is_reported_and_nothing_is_lost(lab):
    bad = lab.state_dir / "config" / "zz-malformed.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n  spec: [\n")
    try:
        dump = wait_until(lambda: (d := _cp_dump(lab)) and any("zz-malformed.yaml" in json.dumps(e) for e in d.get("errors", [])) and d,
                          "the control plane to report the malformed file")
        kinds = {(r["kind"], r["metadata"]["name"]) for r in dump["resources"]}
        assert ("Service", "web") in kinds, "valid objects must survive a bad file beside them"
        assert lab.curl("sleep", "http://10.96.0.10/").returncode == 0
    finally:
        bad.unlink()
    wait_until(lambda: not any("zz-malformed" in json.dumps(e) for e in _cp_dump(lab).get("errors", [])),
               "the error to clear once the file is gone")


def test_all_components_still_running(lab):
    # after every bad input above (and in the policy tests), nothing has died
    for p in lab.state()["procs"]:
        with open(f"/proc/{p['pid']}/stat") as f:
            assert f.read().split()[2] != "Z", f"{p['name']} is a zombie"
