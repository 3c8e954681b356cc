"""The trellis.dev CRDs: generated from meshcore.resources, committed in the chart, and
agreeing with the loader on the example custom resources."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from meshcore.resources import KINDS, ResourceInvalid, from_dict
from trellis.deploy import crdgen
from trellis.deploy.commands import CRD_DIR, drift

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "kubernetes"


def _crds() -> dict[tuple[str, str], dict]:
    out = {}
    for p in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(p.read_text())
        for v in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def _strict(schema: dict) -> dict:
    """The API server's strict field validation (kubectl's default since 1.27) rejects
    unknown fields; JSON Schema needs additionalProperties: false for that."""
    s = copy.deepcopy(schema)
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    for k, v in list(s.items()):
        if k == "properties":
            s[k] = {n: _strict(x) for n, x in v.items()}
        elif isinstance(v, dict):
            s[k] = _strict(v)
    return s


def _validator(schema):
    return jsonschema.Draft7Validator(_strict(schema), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _example_resources():
    for p in sorted(EXAMPLES.glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            if d and d["apiVersion"].startswith("trellis.dev/"):
                yield p.name, d


def test_committed_crds_match_the_resource_model():
    generated = crdgen.generate()
    assert drift(CRD_DIR, generated) == [], "run `trellis crds --write` and commit deploy/helm/trellis/crds"
    ours = {k for (api, k) in KINDS if api.startswith("trellis.dev/")}
    assert {yaml.safe_load(t)["spec"]["names"]["kind"] for t in generated.values()} == ours
    assert {"AuthorizationPolicy", "PeerAuthentication", "WorkloadEntry"} <= ours


def test_drift_is_reported(tmp_path):
    generated = crdgen.generate()
    name = sorted(generated)[0]
    for n, t in generated.items():
        (tmp_path / n).write_text(t)
    (tmp_path / name).write_text(generated[name].replace("minimum: 1", "minimum: 2") + "# edited\n")
    (tmp_path / "gone.trellis.dev.yaml").write_text("{}")
    assert drift(tmp_path, generated) == [f"{tmp_path / name}: differs from the resource model",
                                          f"{tmp_path / 'gone.trellis.dev.yaml'}: no such kind in the resource model any more"]


def test_schema_follows_the_model_fields():
    spec = _crds()[("trellis.dev/v1alpha1", "AuthorizationPolicy")]["properties"]["spec"]
    assert spec["properties"]["action"]["enum"] == ["ALLOW", "DENY", "AUDIT"]
    ports = spec["properties"]["rules"]["items"]["properties"]["to"]["items"]["properties"]["operation"]["properties"]["ports"]
    assert ports["items"]["x-kubernetes-int-or-string"] and {"type": "integer", "minimum": 1, "maximum": 65535} in \
        ports["items"]["anyOf"]   # Istio writes ports as strings: "8080" and 8080 both
    we = _crds()[("trellis.dev/v1alpha1", "WorkloadEntry")]
    assert we["required"] == ["spec"] and we["properties"]["spec"]["required"] == ["address", "node"]
    pa = _crds()[("trellis.dev/v1alpha1", "PeerAuthentication")]["properties"]["spec"]["properties"]
    assert pa["mtls"]["properties"]["mode"]["enum"] == ["STRICT", "PERMISSIVE", "UNSET"]


def test_every_example_custom_resource_validates_against_its_crd_and_the_loader():
    crds, seen = _crds(), set()
    for name, d in _example_resources():
        errors = [e.message for e in _validator(crds[(d["apiVersion"], d["kind"])]).iter_errors(d)]
        assert errors == [], f"{name}: {d['kind']} {d['metadata']['name']}: {errors}"
        from_dict(d, source=name)  # and the control plane's loader takes it too
        seen.add(d["kind"])
    assert seen == {"AuthorizationPolicy", "PeerAuthentication", "WorkloadEntry"}


BAD = [
    ({"spec": {"action": "MAYBE"}}, "AuthorizationPolicy", "'MAYBE' is not one of"),
    ({"spec": {"rules": [{"to": [{"operation": {"ports": [70000]}}]}]}}, "AuthorizationPolicy",
     "70000 is not valid under any of the given schemas"),
    ({"spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}}, "AuthorizationPolicy",
     "'http' is not valid under any of the given schemas"),
    # what needs JWT or an ext-authz provider is refused by the API server too, not pruned
    ({"spec": {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}}, "AuthorizationPolicy", "expected to be empty"),
    ({"spec": {"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]}}, "AuthorizationPolicy",
     "does not match"),
    ({"spec": {"action": "CUSTOM", "provider": {"name": "ext"}}}, "AuthorizationPolicy", "'CUSTOM' is not one of"),
    ({"spec": {"action": "CUSTOM", "provider": {"name": "ext"}}}, "AuthorizationPolicy", "expected to be empty"),
    ({"spec": {"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}}, "AuthorizationPolicy", "'principal' was unexpected"),
    ({"spec": {"mtls": {"mode": "strict"}}}, "PeerAuthentication", "'strict' is not one of"),
    ({"spec": {"address": "10.0.0.300", "node": "n1"}}, "WorkloadEntry", "is not valid under any of the given schemas"),
    ({"spec": {"address": "10.0.0.3"}}, "WorkloadEntry", "'node' is a required property"),
]


@pytest.mark.parametrize("patch,kind,message", BAD)
def test_crd_schema_and_loader_both_reject_bad_resources(patch, kind, message):
    d = {"apiVersion": "trellis.dev/v1alpha1", "kind": kind, "metadata": {"name": "bad", "namespace": "demo"}, **patch}
    errors = [e.message for e in _validator(_crds()[(d["apiVersion"], kind)]).iter_errors(d)]
    assert any(message in e for e in errors), errors
    with pytest.raises(ResourceInvalid):
        from_dict(d)


def test_a_check_the_generator_cannot_read_is_named():
    def mystery(v, path, problems):  # accepts nothing it is probed with
        problems.append((path, "no"))
    with pytest.raises(crdgen.SchemaExportError, match=r"spec.x: cannot tell what .*mystery"):
        crdgen.schema_of(mystery, "spec.x")


def test_checks_built_outside_schema_py_are_followed():
    """Kinds in other modules wrap the factories (a length cap around list_of, a duration
    that parses a string); the generator follows the check each hands its value to."""
    from meshcore.resources.schema import F, integer, list_of, obj, string

    def max_items(check, n):
        def wrapped(v, path, problems):
            if isinstance(v, list) and len(v) > n:
                problems.append((path, f"at most {n}"))
                return None
            return check(v, path, problems)
        return wrapped

    def percent(v, path, problems):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            problems.append((path, "a percentage"))
            return None
        return float(v)

    spec = obj(dict, {"ports": F("ports", max_items(list_of(integer(1, 9)), 4), required=True),
                      "share": F("share", percent), "name": F("name", max_items(string(), 1))})
    assert crdgen.schema_of(spec) == {"type": "object", "required": ["ports"], "properties": {
        "ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}},
        "share": {"type": "number"},
        "name": {"type": "string"}}}
