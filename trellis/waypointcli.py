"""`trellis waypoint apply|list|status|delete` and `trellis routes`.

They edit the config the mesh reads: the running lab's live config dir (the supervisor
then starts or stops the waypoint pods, trellis/lab/waypointpods.py), or any config
directory given with `--config-dir`. Exit codes as kubectl: 0 ok, 1 failure or not
found, 2 usage."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from . import waypointconfig as wc
from .output import FORMATS, render

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
CONFIG_DIR = click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path),
                          help="a config directory to edit instead of the running lab's live config")
NAME = click.option("--name", default="waypoint", show_default=True, help="the waypoint (Gateway) name")

LIST_COLUMNS = [("NAMESPACE", "namespace"), ("NAME", "name"), ("CLASS", "class"), ("REPLICAS", "replicas"),
                ("USED BY", "usedBy")]
STATUS_COLUMNS = [("WAYPOINT", "waypoint"), ("POD", "name"), ("NODE", "node"), ("ADDRESS", "address"),
                  ("IDENTITY", "identity"), ("PROCESS", "process"), ("RESTARTS", "restarts"), ("READY", "ready")]
ROUTE_COLUMNS = [("WAYPOINT", "waypoint"), ("PARENT", "parent"), ("ROUTE", "route"), ("MATCHES", "matchesText"),
                 ("BACKENDS", "backendsText"), ("TIMEOUTS", "timeoutsText"), ("RETRY", "retryText"),
                 ("POLICIES", "policiesText"), ("FROM", "from")]   # FROM: a consumer route's namespace, "*"


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _config_dir(given: Path | None) -> Path:
    if given is not None:
        if not given.is_dir():
            _fail(f"--config-dir {given}: no such directory")
        return given
    from .lab import state
    st = state.load()
    if st is None:
        _fail(f"no lab running (no {state.state_file()}) and no --config-dir given; "
              f"start one with `trellis lab up` or point --config-dir at a config directory")
    try:
        return state.config_dir_of(st)
    except ValueError as exc:
        _fail(str(exc))


def _load(config_dir: Path):
    from meshcore.resources import load_dir
    return load_dir(config_dir).resources


def _find(resources, kind: str, namespace: str | None, name: str):
    return next((r for r in resources if r.kind == kind and (r.namespace or "") == (namespace or "")
                 and r.name == name), None)


def _apply(config_dir: Path, docs: list[dict]) -> list[tuple[Any, str]]:
    from meshcore.resources.errors import ResourceInvalid
    from meshcore.resources.model import from_dict
    from .lab import liveconfig
    try:
        resources = [from_dict(d, "<trellis waypoint>") for d in docs]
    except ResourceInvalid as exc:   # e.g. a name that is not a DNS label: name the option too
        option = {"metadata.name": "--name", "metadata.namespace": "--namespace"}
        _fail("; ".join(f"{option[e.path] + ': ' if e.path in option else ''}{e.obj}: {e.path}: {e.message}"
                        for e in exc.errors))
    return liveconfig.apply(config_dir, resources)


def _waypoints(resources, namespace: str | None, name: str | None = None):
    return sorted((r for r in resources if r.kind == "Gateway" and getattr(r.spec, "is_waypoint", False)
                   and namespace in (None, r.namespace) and name in (None, r.name)),
                  key=lambda r: (r.namespace, r.name))


def _scope(namespace: str | None, all_namespaces: bool) -> str | None:
    if namespace and all_namespaces:
        raise click.UsageError("-n and -A exclude each other")
    return None if all_namespaces else (namespace or "default")


@click.group("waypoint")
def waypoint() -> None:
    """Declare, inspect and remove waypoints (Gateways of class trellis-waypoint)."""


@waypoint.command("apply")
@click.option("-n", "--namespace", required=True)
@NAME
@click.option("--enroll-namespace", is_flag=True, help="label the namespace trellis.dev/use-waypoint: NAME")
@click.option("--replicas", type=click.IntRange(1, 16), help="pods to run (annotation trellis.dev/replicas)")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="in a running lab, label the namespace only once a replica is ready (istioctl's --wait)")
@click.option("--timeout", type=click.IntRange(1, 3600), default=120, show_default=True, help="seconds to wait")
@CONFIG_DIR
def apply_cmd(namespace: str, name: str, enroll_namespace: bool, replicas: int | None, wait: bool, timeout: int,
              config_dir: Path | None) -> None:
    """Create or update the waypoint NAME in NAMESPACE."""
    d = _config_dir(config_dir)
    resources = _load(d)
    old = _find(resources, "Gateway", namespace, name)
    docs = [wc.gateway(namespace, name, replicas, old.to_dict() if old else None)]
    if enroll_namespace and wait and config_dir is None:
        # the label sends the namespace's traffic to the waypoint at once, and a waypoint with
        # no ready replica refuses it (fail closed): let the lab list a ready replica first
        _echo_applied(_apply(d, docs))
        docs = []
        _wait_listed(d, namespace, name, timeout)
    if enroll_namespace:
        ns = _find(resources, "Namespace", None, namespace)
        docs.append(wc.enroll(namespace, name, ns.to_dict() if ns else None))
    _echo_applied(_apply(d, docs) if docs else [])
    if not enroll_namespace and not _users(resources, namespace, name):
        click.echo(f"note: nothing uses waypoint {namespace}/{name} yet: --enroll-namespace labels namespace/"
                   f"{namespace} for it, or label a Service trellis.dev/use-waypoint={name}", err=True)


def _users(resources, namespace: str, name: str) -> list[str]:
    """Who sends its traffic through the waypoint: its namespace, Services with their own label."""
    from meshcore.resources import WAYPOINT_LABEL
    ns = _find(resources, "Namespace", None, namespace)
    users = [f"namespace/{namespace}"] if ns is not None and (ns.labels or {}).get(WAYPOINT_LABEL) == name else []
    return users + [f"service/{s.name}" for s in resources if s.kind == "Service" and s.namespace == namespace
                    and (s.labels or {}).get(WAYPOINT_LABEL) == name]


def _echo_applied(applied) -> None:
    for r, verb in applied:
        click.echo(f"{r.kind.lower()}/{r.name} {'labeled' if r.kind == 'Namespace' and verb != 'unchanged' else verb}")


def _wait_listed(d: Path, namespace: str, name: str, timeout: int) -> None:
    """Until a replica of the waypoint is in the config (the lab lists a pod once it is ready)."""
    import time

    from meshcore.mesh import GATEWAY_NAME_LABEL
    click.echo(f"waiting for a ready replica of {namespace}/{name} ...", err=True)
    deadline = time.monotonic() + timeout
    while not any(r.kind == "WorkloadEntry" and r.namespace == namespace
                  and (r.labels or {}).get(GATEWAY_NAME_LABEL) == name for r in _load(d)):
        if time.monotonic() > deadline:
            _fail(f"waypoint {namespace}/{name} has no ready replica after {timeout}s, so namespace/{namespace} "
                  f"was not labeled; see `trellis waypoint status -n {namespace}` and the pod's log "
                  f"(`trellis lab status`), or pass --no-wait to label it now")
        time.sleep(0.25)


@waypoint.command("delete")
@click.option("-n", "--namespace", required=True)
@NAME
@CONFIG_DIR
def delete_cmd(namespace: str, name: str, config_dir: Path | None) -> None:
    """Remove the waypoint, and the namespace's use-waypoint label when it names it."""
    from .lab import liveconfig
    d = _config_dir(config_dir)
    resources = _load(d)
    gw = _find(resources, "Gateway", namespace, name)
    if gw is None or not gw.spec.is_waypoint:
        _fail(f"waypoint {namespace}/{name} not found in {d}")
    ns = _find(resources, "Namespace", None, namespace)
    relabel = wc.unenroll(name, ns.to_dict() if ns else None)
    if relabel is not None:   # first: callers go back to the L4 path before the pods go
        _apply(d, [relabel])
        click.echo(f"namespace/{namespace} unlabeled")
    liveconfig.delete(d, [gw])
    click.echo(f"gateway/{name} deleted")
    users = _users(resources, namespace, name)
    for user in users:   # a Service's own label is theirs to change; it names nothing now
        if user.startswith("service/"):
            click.echo(f"warning: {user} is still labeled trellis.dev/use-waypoint={name}: connections to it are "
                       f"refused until that label is removed (or set to none) or the waypoint is applied again",
                       err=True)
    for pol in _l7_policies(resources, namespace, users):
        click.echo(f"warning: authorizationpolicy/{pol.name} has HTTP rules (methods/paths) for Services this "
                   f"waypoint served: without a waypoint ztunnel enforces it at L4, where HTTP rules fail closed "
                   f"({'every connection is refused' if pol.spec.action == 'DENY' else 'they admit no connection'}); "
                   f"delete it (`trellis lab delete -f ...`) to go back to plain L4", err=True)


def _l7_policies(resources, namespace: str, users: list[str]) -> list:
    """AuthorizationPolicies with HTTP rules attached to Services that used the waypoint
    (the namespace's label covers all its Services; a Service's own label, that Service)."""
    from meshcore.resources import WAYPOINT_LABEL
    whole_ns = f"namespace/{namespace}" in users
    services = {s.name for s in resources if s.kind == "Service" and s.namespace == namespace
                and (f"service/{s.name}" in users or (whole_ns and (s.labels or {}).get(WAYPOINT_LABEL) is None))}
    return [p for p in resources if p.kind == "AuthorizationPolicy" and p.namespace == namespace
            and any(t.kind == "Service" and t.name in services for t in p.spec.target_refs)
            and any(op.has_l7 for rule in p.spec.rules for op in rule.to)]


@waypoint.command("list")
@click.option("-n", "--namespace")
@click.option("-A", "--all-namespaces", is_flag=True)
@CONFIG_DIR
@OUTPUT
def list_cmd(namespace: str | None, all_namespaces: bool, config_dir: Path | None, fmt: str) -> None:
    """Waypoints in the config, and the namespaces and Services that use them."""
    resources = _load(_config_dir(config_dir))
    rows = [{"namespace": gw.namespace, "name": gw.name, "class": gw.spec.gateway_class_name,
             "replicas": wc.replicas_of(gw.to_dict()), "usedBy": _users(resources, gw.namespace, gw.name)}
            for gw in _waypoints(resources, _scope(namespace, all_namespaces))]
    click.echo(render(rows, fmt, LIST_COLUMNS))


def _lab_pods(namespace: str | None, name: str | None) -> tuple[Any, list[dict]]:
    from .lab import state
    st = state.load()
    if st is None:
        return None, []
    return st, [p for p in st.pods if p.get("waypoint") and namespace in (None, p["namespace"])
                and name in (None, p["waypoint"])]


@waypoint.command("status")
@click.option("-n", "--namespace")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("--name", help="only this waypoint")
@CONFIG_DIR
@OUTPUT
def status_cmd(namespace: str | None, all_namespaces: bool, name: str | None, config_dir: Path | None,
               fmt: str) -> None:
    """Each waypoint's replicas (desired/ready) and pods: node, address, identity, readiness
    (GET /healthz/ready on its readiness port, in the pod's netns). Pods exist in a running lab only."""
    from meshcore.identity import workload_identity
    from .lab import state
    from .lab.status import waypoint_ready
    scope = _scope(namespace, all_namespaces)
    resources = _load(_config_dir(config_dir))
    gws = _waypoints(resources, scope, name)
    if not gws and name:
        _fail(f"waypoint {scope or '*'}/{name} not found")
    st, pods = _lab_pods(scope, name) if config_dir is None else (None, [])
    procs = {p.name: p for p in (st.procs if st else [])}
    out = []
    for gw in gws:
        rows = []
        for p in (q for q in pods if q["namespace"] == gw.namespace and q["waypoint"] == gw.name):
            proc = procs.get(f"waypoint/{p['namespace']}/{p['name']}")
            ready, err = waypoint_ready(p)
            rows.append({"waypoint": f"{gw.namespace}/{gw.name}", "name": p["name"], "node": p["node"],
                         "address": p["address"], "netns": p["netns"],
                         "identity": workload_identity(st.trust_domain, p["namespace"], p["serviceAccount"]),
                         "process": "running" if proc and state.alive(proc) else "exited",
                         "pid": proc.pid if proc else None, "restarts": proc.restarts if proc else None,
                         "ready": ready, "notReady": err})
        out.append({"namespace": gw.namespace, "name": gw.name, "desired": wc.replicas_of(gw.to_dict()),
                    "ready": sum(1 for r in rows if r["ready"]), "pods": rows})
    if fmt != "table":
        click.echo(render(out, fmt))
        return
    if not out:
        click.echo("No resources found.")
        return
    for w in out:
        click.echo(f"{w['namespace']}/{w['name']}: replicas {w['ready']}/{w['desired']} ready"
                   + ("" if st is not None else " (no lab running: pods are not known)"))
    rows = [r for w in out for r in w["pods"]]
    if rows:
        click.echo("")
        click.echo(render(rows, "table", STATUS_COLUMNS))


# ---- routes -------------------------------------------------------------------------

def _text_match(m: dict) -> str:
    parts = []
    path = m.get("path")
    if isinstance(path, dict):
        parts.append(f"{path.get('type', 'PathPrefix')} {path.get('value', '/')}")
    elif path:
        parts.append(str(path))
    method = m.get("method")
    if isinstance(method, dict):   # a GRPCRoute's: service/method, either may be left out
        op = "~" if method.get("type") == "RegularExpression" else ""
        parts.append(f"{op}{method.get('service') or '*'}/{method.get('method') or '*'}")
    elif method:
        parts.append(str(method))
    for key in ("headers", "queryParams"):
        for h in m.get(key) or []:
            op = "~" if h.get("type") == "RegularExpression" else "="
            parts.append(f"{'?' if key == 'queryParams' else ''}{h.get('name')}{op}{h.get('value')}")
    return " ".join(parts) or "*"


def _service_rows(entry: dict) -> list[dict]:
    """A waypoint's /routes entry (one Service port: its policies and attached routes, each
    with its rules) as one row per rule; a port without producer routes has one row to the
    Service for every caller ("*") without consumer routes of its own."""
    policies = ([f"AuthorizationPolicy/{k}" for k in entry.get("authorization") or []]
                + [f"RateLimitPolicy/{k}" for k in entry.get("rateLimits") or []]
                + ([f"TrafficPolicy/{entry['trafficPolicy']}"] if entry.get("trafficPolicy") else []))
    parent = f"{entry['service']}:{entry.get('port')}"
    rows: list[dict] = []
    for route in entry.get("routes") or []:
        kind, _, name = str(route.get("route", "")).partition(" ")   # "HTTPRoute ns/name"
        for i, rule in enumerate(route.get("rules") or []):
            rows.append(dict(rule, parent=parent, route=name or kind, kind=kind if name else None,
                             rule=rule.get("rule", i), policies=policies,
                             **{"from": route.get("consumers") or "*"}))   # a consumer route: its namespace
    if not any(r["from"] == "*" for r in rows):
        ns, _, name = entry["service"].partition("/")
        rows.insert(0, {"parent": parent, "from": "*", "route": None, "kind": None, "rule": None, "matches": [],
                     "backends": [{"name": name, "namespace": ns, "port": entry.get("port"), "weight": 1}],
                     "timeouts": {}, "retry": None, "policies": policies})
    return rows


def route_rows(data: Any, waypoint: str) -> list[dict]:
    """Rows from a waypoint's admin /routes (docs/internals.md "trellis routes" for the shape):
    per-Service entries, or rows already flat."""
    from .inspect import items
    out = []
    flat = [row for r in items(data, "routes")
            for row in (_service_rows(r) if "service" in r and "parent" not in r else [r])]
    for r in flat:
        backends = [f"{b.get('name') or b.get('service')}:{b.get('port')}={b.get('weight', 1)}"
                    for b in r.get("backends") or [] if isinstance(b, dict)]
        retry = r.get("retry") or {}
        out.append(dict(r, waypoint=waypoint, **{"from": r.get("from") or "*"},
                        matchesText=",".join(_text_match(m) for m in r.get("matches") or [] if isinstance(m, dict)) or "*",
                        backendsText=",".join(backends),
                        timeoutsText=",".join(f"{k}={v}" for k, v in (r.get("timeouts") or {}).items() if v),
                        retryText=" ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                                           for k, v in retry.items()) if isinstance(retry, dict) else str(retry),
                        policiesText=",".join(p if isinstance(p, str) else f"{p.get('kind')}/{p.get('name')}"
                                              for p in r.get("policies") or [])))
    return out


@click.command("routes")
@click.option("-n", "--namespace")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("--admin", "admin_addr", metavar="HOST:PORT", help="a waypoint's admin address outside the lab")
@OUTPUT
def routes(namespace: str | None, all_namespaces: bool, admin_addr: str | None, fmt: str) -> None:
    """Routes as the waypoints apply them (GET /routes on each waypoint's admin port): parent
    Service, matches, backends with weights, timeouts, retry, policies."""
    from . import inspect as insp
    from .lab.state import state_dir
    from .lab.waypointpods import ADMIN
    if admin_addr:
        targets = [(admin_addr, [insp.Target(admin_addr, *insp.parse_hostport(admin_addr))])]
    else:
        scope = _scope(namespace, all_namespaces)
        st, pods = _lab_pods(scope, None)
        if st is None:
            _fail("no lab running and no --admin HOST:PORT given")
        host, port = insp.parse_hostport(ADMIN)
        # the live config says which waypoints should run (in --kubernetes mode the API does)
        declared = [] if st.kubernetes else _waypoints(_load(state_dir() / "config"), scope)
        if not declared and not pods:
            click.echo(f"no waypoint in {f'namespace {scope}' if scope else 'any namespace'}: routes are applied "
                       f"by waypoints (`trellis waypoint apply -n {scope or 'NS'} --enroll-namespace`)", err=True)
        by_wp: dict[str, list] = {f"{gw.namespace}/{gw.name}": [] for gw in declared}
        for p in pods:   # every replica applies the same routes: the first that answers speaks for all
            by_wp.setdefault(f"{p['namespace']}/{p['waypoint']}", []).append(
                insp.Target(f"waypoint/{p['namespace']}/{p['name']}", host, port, p["netns"]))
        targets = sorted(by_wp.items())
    rows, errors = [], []
    for label, ts in targets:
        if not ts:   # declared, but the lab runs no pod of it (yet)
            errors.append(f"waypoint {label} has no pod running; see `trellis waypoint status -n "
                          f"{label.split('/')[0]}`")
        for i, t in enumerate(ts):
            try:
                rows += route_rows(insp.fetch(t, "/routes"), label)
                break
            except insp.InspectError as exc:
                if i == len(ts) - 1:
                    errors.append(str(exc))
    click.echo(render(rows, fmt, ROUTE_COLUMNS))
    for e in errors:
        click.echo(f"error: {e}", err=True)
    if errors:
        sys.exit(1)
