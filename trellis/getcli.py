"""`trellis get KIND [NAME]`: the Gateway API objects and Services of the lab's live config
(or of any config directory), kubectl-style, with the status the control plane computes for
them (controlplane/status.py): what `kubectl get httproute NAME -o yaml` shows in a cluster,
where the control plane writes that same status through the status subresource.

`-o json|yaml` prints as kubectl does: the bare object for `get KIND NAME` (one match), else
a `List` (`apiVersion: v1`, `kind: List`, `metadata: {resourceVersion: ""}`, `items`), also
when empty. Services show CLUSTER-IP `None` when headless and `<none>` for ExternalName,
whose EXTERNAL-IP is its externalName, as `kubectl get svc` does.

Objects that do not validate are listed too, with their route parents not Accepted
(UnsupportedValue) and the validation errors as the message. Exit codes as kubectl: 0 ok,
1 when NAME is not found."""
from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path

import click
import yaml

from .output import FORMATS, render

KINDS = {"httproute": "HTTPRoute", "grpcroute": "GRPCRoute", "gateway": "Gateway", "gatewayclass": "GatewayClass",
         "referencegrant": "ReferenceGrant", "service": "Service"}
ALIASES = {**{k: v for k, v in KINDS.items()}, **{k + ("es" if k.endswith("s") else "s"): v for k, v in KINDS.items()},
           "gtw": "Gateway", "gc": "GatewayClass", "refgrant": "ReferenceGrant", "svc": "Service"}
COLUMNS = {
    "HTTPRoute": [("NAMESPACE", "namespace"), ("NAME", "name"), ("PARENT", "parent"), ("ACCEPTED", "accepted"),
                  ("RESOLVED-REFS", "resolvedRefs"), ("WAYPOINT", "waypoint"), ("MESSAGE", "message")],
    "Gateway": [("NAMESPACE", "namespace"), ("NAME", "name"), ("CLASS", "class"), ("ADDRESS", "address"),
                ("ACCEPTED", "accepted"), ("PROGRAMMED", "programmed"), ("MESSAGE", "message")],
    "GatewayClass": [("NAME", "name"), ("CONTROLLER", "controller"), ("ACCEPTED", "accepted"),
                     ("MESSAGE", "message")],
    "ReferenceGrant": [("NAMESPACE", "namespace"), ("NAME", "name"), ("FROM", "from"), ("TO", "to")],
    "Service": [("NAMESPACE", "namespace"), ("NAME", "name"), ("TYPE", "type"), ("CLUSTER-IP", "clusterIP"),
                ("EXTERNAL-IP", "externalIP"), ("PORT(S)", "ports")],
}
COLUMNS["GRPCRoute"] = COLUMNS["HTTPRoute"]


def config_time(files) -> str:
    """When the config last changed (the newest mtime of its files and directories, which a
    removed file changes; now when there is none): the
    `lastTransitionTime` of the status computed from it. A directory has no status history,
    and a condition can only have changed when the config did, so this is the latest moment
    it can have happened; unlike the time of the command, it is the same on every `get`."""
    times = []
    for f in files:
        try:
            times.append(f.stat().st_mtime)
        except OSError:
            continue
    when = datetime.fromtimestamp(max(times), timezone.utc) if times else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def objects_with_status(config_dir: Path, kind: str, now: str | None = None) -> list[dict]:
    """Every object of `kind` written in `config_dir` (valid or not), each with the status the
    control plane computes from the whole directory."""
    from controlplane.sources import settle
    from controlplane.status import new_status, problems_by_object
    from meshcore.resources.loader import load_dir, yaml_files
    loaded = load_dir(config_dir)
    resources, errors = settle(loaded.resources, loaded.errors)
    by_key = {r.key: r for r in resources}
    problems = problems_by_object(errors)
    files = yaml_files(config_dir)
    now = now or config_time([Path(config_dir), *{f.parent for f in files}, *files])   # dirs: a file removed
    out = []
    for f in files:
        try:
            docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue   # load_dir has reported it
        for d in docs:
            if not isinstance(d, dict) or d.get("kind") != kind or not isinstance(d.get("metadata"), dict):
                continue
            d = copy.deepcopy(d)
            if kind != "GatewayClass":
                d["metadata"].setdefault("namespace", "default")
            d.pop("status", None)   # what the file says is not what the control plane reports
            st = new_status(d, by_key, problems, now)
            if st is not None:
                d["status"] = st
            out.append(d)
    return sorted(out, key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"].get("name", "")))


def _cond(conditions, type_: str) -> str:
    c = next((c for c in conditions or [] if c.get("type") == type_), None)
    return "-" if c is None else (c["status"] if c["status"] == "True" else f"{c['status']} ({c['reason']})")


def _message(conditions) -> str:
    return "; ".join(c["message"] for c in conditions or [] if c.get("status") == "False" and c.get("message"))


def rows(kind: str, objs: list[dict]) -> list[dict]:
    out = []
    for o in objs:
        meta, spec, st = o["metadata"], o.get("spec") or {}, o.get("status") or {}
        base = {"namespace": meta.get("namespace"), "name": meta.get("name")}
        if kind in ("HTTPRoute", "GRPCRoute"):
            for p in st.get("parents") or [{}]:
                ref, cs = p.get("parentRef") or {}, p.get("conditions")
                parent = (f"{ref.get('kind', 'Gateway')}/{ref.get('namespace') or meta.get('namespace')}/"
                          f"{ref.get('name')}" + (f":{ref['port']}" if ref.get("port") else "")) if ref else "-"
                out.append({**base, "parent": parent, "accepted": _cond(cs, "Accepted"),
                            "resolvedRefs": _cond(cs, "ResolvedRefs"), "waypoint": _cond(cs, "ResolvedWaypoints"),
                            "message": _message(cs)})
        elif kind == "Gateway":
            out.append({**base, "class": spec.get("gatewayClassName"),
                        "address": [a.get("value") for a in st.get("addresses") or []],
                        "accepted": _cond(st.get("conditions"), "Accepted"),
                        "programmed": _cond(st.get("conditions"), "Programmed"),
                        "message": _message(st.get("conditions"))})
        elif kind == "GatewayClass":
            out.append({**base, "controller": spec.get("controllerName"),
                        "accepted": _cond(st.get("conditions"), "Accepted"),
                        "message": _message(st.get("conditions"))})
        elif kind == "Service":
            out.append({**base, **_service_columns(spec)})
        else:
            out.append({**base, "from": [f"{f.get('kind')}/{f.get('namespace')}" for f in spec.get("from") or []],
                        "to": [f"{t.get('kind')}/{t.get('name') or '*'}" for t in spec.get("to") or []]})
    return out


def _service_columns(spec: dict) -> dict:
    """TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S) as kubectl prints them (its printers.go)."""
    type_ = spec.get("type") or "ClusterIP"
    external = (spec.get("externalName") if type_ == "ExternalName" else ",".join(spec.get("externalIPs") or [])
                or ("<pending>" if type_ == "LoadBalancer" else "<none>"))
    ports = ",".join(f"{p.get('port')}" + (f":{p['nodePort']}" if p.get("nodePort") else "") +
                     f"/{p.get('protocol') or 'TCP'}" for p in spec.get("ports") or [] if isinstance(p, dict))
    return {"type": type_, "clusterIP": spec.get("clusterIP") or "<none>", "externalIP": external or "<none>",
            "ports": ports or "<none>"}


def as_list(items: list[dict]) -> dict:
    """kubectl's `-o json|yaml` for several objects (or none): a v1 List, keys in its order."""
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


@click.command("get")
@click.argument("kind", type=click.Choice(sorted(ALIASES), case_sensitive=False), metavar="KIND")
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="only this namespace (default: every one)")
@click.option("-A", "--all-namespaces", is_flag=True, help="every namespace (the default)")
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path),
              help="a config directory instead of the running lab's live config")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def get(kind: str, name: str | None, namespace: str | None, all_namespaces: bool, config_dir: Path | None,
        fmt: str) -> None:
    """Gateway API objects with their status, and Services: KIND is httproute, grpcroute,
    gateway, gatewayclass, referencegrant or service (plurals and gtw, gc, refgrant, svc too).
    -o json|yaml: the object for KIND NAME, else a kubectl List."""
    from .waypointcli import _config_dir
    kind = ALIASES[kind.lower()]
    objs = [o for o in objects_with_status(_config_dir(config_dir), kind)
            if name in (None, o["metadata"].get("name"))
            and (all_namespaces or namespace in (None, o["metadata"].get("namespace")))]
    if name is not None and not objs:
        raise click.ClickException(f'{kind.lower()} "{name}" not found' + (f" in namespace {namespace}" if namespace
                                                                           else ""))
    data = objs[0] if name is not None and len(objs) == 1 else as_list(objs)
    click.echo(render(data, fmt, COLUMNS[kind], rows(kind, objs)))
