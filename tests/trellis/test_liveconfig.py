"""lab apply/delete act on objects, not files: re-applying replaces, never duplicates."""
from pathlib import Path

from meshcore.resources import load_dir, parse_documents
from trellis.lab import liveconfig

NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {trellis.dev/dataplane-mode: ambient}\n"
SVC = ("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
       "spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n")


def test_apply_replaces_an_object_defined_in_another_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(NS + "---\n" + SVC)
    plain = parse_documents(NS.replace("  labels: {trellis.dev/dataplane-mode: ambient}\n", ""), "ns.yaml").resources
    assert [v for _, v in liveconfig.apply(tmp_path, plain)] == ["configured"]
    res = load_dir(tmp_path)
    assert res.errors == []
    ns = [r for r in res.resources if r.kind == "Namespace"]
    assert len(ns) == 1 and ns[0].labels == {}
    assert any(r.kind == "Service" for r in res.resources), "the other object of base.yaml stays"


def test_apply_new_then_delete(tmp_path: Path):
    (svc,) = parse_documents(SVC, "s.yaml").resources
    assert [v for _, v in liveconfig.apply(tmp_path, [svc])] == ["created"]
    assert [r.key for r in load_dir(tmp_path).resources] == [svc.key]
    deleted, missing = liveconfig.delete(tmp_path, [svc])
    assert deleted == [svc] and missing == []
    assert load_dir(tmp_path).resources == [] and list(tmp_path.glob("*.yaml")) == []
    deleted, missing = liveconfig.delete(tmp_path, [svc])
    assert deleted == [] and missing == [svc]
