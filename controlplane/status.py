"""Gateway API status, computed (pure): what `status` the control plane reports on the
objects it owns, from one snapshot of the config.

- HTTPRoute / GRPCRoute: one `status.parents[]` entry per parentRef that is ours, with our
  `controllerName`: every Service parent (GAMMA, group "" kind Service) and every parentRef
  to a Gateway of class trellis-waypoint (which takes no routes: NotAllowedByListeners).
  Conditions `Accepted` (False/NoMatchingParent: no such Service, port or port name;
  False/UnsupportedValue: the route does not validate, or its parent is a headless or
  ExternalName Service, which GEP-1294 says are no parents), `ResolvedRefs` (False/InvalidKind,
  also for an ExternalName backend, RefNotPermitted, BackendNotFound, for the first offending
  backendRef, every one named in the message) and Istio's `ResolvedWaypoints` (is there a waypoint to apply the route at all).
  Other controllers' entries are kept as they are.
- Gateway of class trellis-waypoint: `Accepted`, `Programmed` (True once a replica runs: a
  workload labelled with its gateway-name), `addresses` (its Service's ClusterIP), and
  `listeners` (name, supportedKinds, attachedRoutes, conditions Accepted, Programmed,
  ResolvedRefs, Conflicted) as the spec requires of every Gateway.
- GatewayClass whose controllerName is ours: `Accepted`.

`merge` lays computed conditions over the served status the way Kubernetes' meta.SetStatusCondition
does: `lastTransitionTime` moves only when a condition's status changes, `observedGeneration`
is the generation the status was computed from. Computing from the same snapshot therefore
gives the same status on every control plane replica, and an unchanged status is not written."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from meshcore import ports
from meshcore.mesh import serves_waypoint, waypoint_for
from meshcore.resources import Resource
from meshcore.resources.gateway import GATEWAY_GROUP, WAYPOINT_CLASS
from meshcore.resources.grants import CONTROLLER_NAME, backend_problem
from meshcore.resources.model import describe

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
Cond = dict


def cond(type_: str, ok: bool, reason: str, message: str = "") -> Cond:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def _parent_is_service(p: dict) -> bool:
    return p.get("group", GATEWAY_GROUP) == "" and p.get("kind", "Gateway") == "Service"


def _parent_is_gateway(p: dict) -> bool:
    return p.get("group", GATEWAY_GROUP) == GATEWAY_GROUP and p.get("kind", "Gateway") == "Gateway"


def owned_parent(p: dict, namespace: str, resources: Mapping[tuple, Resource]) -> bool:
    """A parentRef this controller reports on: a Service, or a Gateway of class trellis-waypoint."""
    if not isinstance(p, dict) or not isinstance(p.get("name"), str):
        return False
    if _parent_is_service(p):
        return True
    gw = resources.get(("Gateway", p.get("namespace") or namespace, p["name"]))
    return _parent_is_gateway(p) and gw is not None and getattr(gw.spec, "is_waypoint", False)


def _service_parent(p: dict, ns: str, resources) -> tuple[Cond, Cond]:
    """(Accepted, ResolvedWaypoints) for a Service parentRef."""
    svc = resources.get(("Service", ns, p["name"]))
    if svc is None:
        return (cond("Accepted", False, "NoMatchingParent", f"parent Service {ns}/{p['name']} does not exist"),
                cond("ResolvedWaypoints", False, "NoMatchingParent", "parent not found"))
    if svc.spec.cluster_ip is None:   # GEP-1294: headless (and ExternalName) Services are no route parents
        why = ("is headless (clusterIP: None)" if svc.spec.headless else "is of type ExternalName")
        return (cond("Accepted", False, "UnsupportedValue",
                     f"Service {ns}/{p['name']} {why}: it has no address for a route to apply to (GAMMA routes "
                     "attach to a Service's cluster IP); a targetRefs AuthorizationPolicy still applies to its "
                     "pods"), cond("ResolvedWaypoints", False, "UnsupportedValue", "parent has no address"))
    ports = {sp.port: sp.name for sp in svc.spec.ports}
    if p.get("port") is not None and p["port"] not in ports:
        return (cond("Accepted", False, "NoMatchingParent", f"Service {ns}/{p['name']} has no port {p['port']}"),
                cond("ResolvedWaypoints", False, "NoMatchingParent", "parent port not found"))
    if p.get("sectionName") is not None and p["sectionName"] not in ports.values():
        return (cond("Accepted", False, "NoMatchingParent",
                     f"Service {ns}/{p['name']} has no port named {p['sectionName']!r}"),
                cond("ResolvedWaypoints", False, "NoMatchingParent", "parent port not found"))
    ns_obj = resources.get(("Namespace", "", ns))
    wp = waypoint_for(ns_obj.labels if ns_obj else None, svc.labels)
    gw = resources.get(("Gateway", ns, wp)) if wp else None
    if wp is None:
        waypoint = cond("ResolvedWaypoints", False, "MissingUseWaypointLabel",
                        "trellis.dev/use-waypoint label missing from the Service and its namespace: no waypoint "
                        "applies this route, traffic to the Service stays on the L4 path")
    elif gw is None or not getattr(gw.spec, "is_waypoint", False):
        waypoint = cond("ResolvedWaypoints", False, "WaypointNotFound",
                        f"the Service uses waypoint {wp}, but there is no Gateway of class {WAYPOINT_CLASS} "
                        f"{ns}/{wp}")
    else:
        waypoint = cond("ResolvedWaypoints", True, "ResolvedWaypoints", f"applied by waypoint {ns}/{wp}")
    return cond("Accepted", True, "Accepted"), waypoint


def _backend_refs(spec: dict) -> list[dict]:
    rules = spec.get("rules") if isinstance(spec.get("rules"), list) else []
    out = []
    for rule in rules:
        refs = rule.get("backendRefs") if isinstance(rule, dict) else None
        out += [b for b in (refs if isinstance(refs, list) else []) if isinstance(b, dict)]
    return out


def resolved_refs(kind: str, namespace: str, spec: dict, resources, parent: tuple[str, str] | None) -> Cond:
    """ResolvedRefs of a route for requests through `parent`: every backendRef must name a
    Service (InvalidKind), be open to the route (RefNotPermitted) and exist with its port
    (BackendNotFound). The reason is the first problem's, in rule order."""
    grants = [r for r in resources.values() if r.kind == "ReferenceGrant"]
    problems: list[tuple[str, str]] = []
    for b in _backend_refs(spec):
        group, bkind, name, port = b.get("group", ""), b.get("kind", "Service"), b.get("name"), b.get("port")
        bns = b.get("namespace") or namespace
        svc = resources.get(("Service", bns, name))
        ports = None if svc is None else {p.port for p in svc.spec.ports}
        reason = backend_problem(grants, kind, namespace, group, bkind, bns, name, port, ports, parent)
        if reason is None and svc.spec.type == "ExternalName":   # the spec: implementations SHOULD NOT
            problems.append(("InvalidKind", f"backendRef {bns}/{name}: Service of type ExternalName is not "
                                            "supported (a DNS alias, not endpoints the mesh can reach)"))
        elif reason == "InvalidKind":
            problems.append((reason, f"backendRef {name}: kind {group or 'core'}/{bkind} is not supported "
                                     "(only Services)"))
        elif reason == "RefNotPermitted":
            problems.append((reason, f"backendRef {bns}/{name} is not open to {kind}s of namespace "
                                     f"{namespace}: add a ReferenceGrant in {bns}"))
        elif reason == "BackendNotFound":
            problems.append((reason, f"backendRef {bns}/{name}: Service does not exist" if ports is None
                             else f"backendRef {bns}/{name}: Service has no port {port}"))
    if not problems:
        return cond("ResolvedRefs", True, "ResolvedRefs")
    return cond("ResolvedRefs", False, problems[0][0], "; ".join(m for _, m in problems))


def route_parents(raw: dict, resources: Mapping[tuple, Resource], problems: Iterable[str] = ()) -> list[dict]:
    """Our status.parents entries for one route (as served or written: raw), conditions
    without timestamps. `problems`: why the route does not validate, if it does not."""
    kind, meta = raw.get("kind"), raw.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    spec = raw.get("spec") if isinstance(raw.get("spec"), dict) else {}
    refs = spec.get("parentRefs") if isinstance(spec.get("parentRefs"), list) else []
    problems = list(problems)
    out = []
    for p in refs:
        if not owned_parent(p, namespace, resources):
            continue
        pns = p.get("namespace") or namespace
        if problems:
            conds = [cond("Accepted", False, "UnsupportedValue", "; ".join(problems))]
        elif _parent_is_gateway(p):
            conds = [cond("Accepted", False, "NotAllowedByListeners",
                          f"a {WAYPOINT_CLASS} Gateway's HBONE listener takes no routes: set the route's parentRef "
                          "to the Service it is for (GAMMA: group \"\", kind Service)"),
                     resolved_refs(kind, namespace, spec, resources, None)]
        else:
            accepted, waypoint = _service_parent(p, pns, resources)
            if accepted["status"] == "True" and pns != namespace:
                accepted["message"] = (f"consumer route: applies to requests from namespace {namespace} to "
                                       f"Service {pns}/{p['name']}")
            conds = [accepted, resolved_refs(kind, namespace, spec, resources, (pns, p["name"])), waypoint]
        out.append({"parentRef": dict(p), "controllerName": CONTROLLER_NAME, "conditions": conds})
    return out


def _listener(name: Any, accepted: Cond, programmed: Cond) -> dict:
    """A status.listeners entry. The HBONE listener takes no routes (a route names the Service
    it is for, GAMMA; one naming the Gateway is NotAllowedByListeners), hence no supported
    kinds and no attached routes, as Istio reports its waypoints' `mesh` listener."""
    return {"name": name, "supportedKinds": [], "attachedRoutes": 0,
            "conditions": [accepted, programmed, cond("ResolvedRefs", True, "ResolvedRefs"),
                           cond("Conflicted", False, "NoConflicts")]}


def _invalid_listeners(raw_spec: Any) -> list[dict]:
    """status.listeners of a waypoint Gateway that does not validate: each listener as written,
    not accepted (a protocol other than HBONE: UnsupportedProtocol; else PortUnavailable)."""
    listeners = (raw_spec or {}).get("listeners") if isinstance(raw_spec, dict) else None
    out = []
    for x in listeners if isinstance(listeners, list) else []:
        if isinstance(x, dict) and isinstance(x.get("name"), str):
            hbone = x.get("protocol") == "HBONE"
            accepted = cond("Accepted", False, "PortUnavailable" if hbone else "UnsupportedProtocol",
                            f"a {WAYPOINT_CLASS} Gateway has one listener, protocol HBONE on port {ports.HBONE}")
            out.append(_listener(x["name"], accepted, cond("Programmed", False, "Invalid", "not accepted")))
    return out


def gateway_status(gw: Resource | None, resources: Mapping[tuple, Resource], problems: Iterable[str] = (),
                   raw_spec: Any = None) -> dict:
    """A waypoint Gateway's status (conditions without timestamps); `gw` None with `problems`
    when it does not validate (its listeners then as `raw_spec` writes them)."""
    problems = list(problems)
    if gw is None or problems:
        msg = "; ".join(problems) or "the Gateway does not validate"
        reason = "ListenersNotValid" if "listeners" in msg else "InvalidParameters"
        return {"conditions": [cond("Accepted", False, reason, msg),
                               cond("Programmed", False, "Invalid", "not accepted")],
                "listeners": _invalid_listeners(raw_spec)}
    replicas = [r for r in resources.values() if r.kind == "WorkloadEntry" and r.namespace == gw.namespace
                and serves_waypoint(r.labels, getattr(r.spec, "labels", None)) == gw.name]
    programmed = (cond("Programmed", True, "Programmed", f"{len(replicas)} waypoint replica(s) running")
                  if replicas else cond("Programmed", False, "Pending", "no waypoint replica is running yet"))
    out: dict[str, Any] = {"conditions": [cond("Accepted", True, "Accepted"), programmed],
                           "listeners": [_listener(x.name, cond("Accepted", True, "Accepted"), dict(programmed))
                                         for x in gw.spec.listeners]}
    svc = resources.get(("Service", gw.namespace, gw.name))
    if svc is not None and svc.spec.cluster_ip is not None and \
            svc.spec.selector.get("gateway.networking.k8s.io/gateway-name") == gw.name:
        out["addresses"] = [{"type": "IPAddress", "value": str(svc.spec.cluster_ip)}]
    return out


def gateway_class_status(name: str) -> dict:
    if name == WAYPOINT_CLASS:
        return {"conditions": [cond("Accepted", True, "Accepted", "trellis waypoints")]}
    return {"conditions": [cond("Accepted", False, "Unsupported",
                                f"trellis implements one GatewayClass, {WAYPOINT_CLASS}")]}


def problems_by_object(errors: Iterable[Any]) -> dict[str, list[str]]:
    """Validation errors (meshcore ResourceError) by the object they name ("HTTPRoute ns/name")."""
    out: dict[str, list[str]] = {}
    for e in errors:
        out.setdefault(e.obj, []).append(f"{e.path}: {e.message}" if e.path else e.message)
    return out


def new_status(raw: dict, resources: Mapping[tuple, Resource], problems: Mapping[str, list[str]],
               now: str) -> dict | None:
    """The whole status one object (as served, with its status, or as written) should have,
    or None when it is none of ours to report on."""
    kind, meta = raw.get("kind"), raw.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name")
    generation = int(meta.get("generation") or 1)
    old = raw.get("status") if isinstance(raw.get("status"), dict) else None
    mine = problems.get(describe(raw), [])
    key = (kind, ns, name)
    if mine and key in resources:
        mine = mine + ["the last valid version stays applied"]
    if kind in ROUTE_KINDS:
        ours = route_parents(raw, resources, mine)
        had = any(isinstance(p, dict) and p.get("controllerName") == CONTROLLER_NAME
                  for p in (old or {}).get("parents") or [])
        return merge_route(old, ours, generation, now) if ours or had else None
    if kind == "Gateway":
        if (raw.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
            return None
        gw = resources.get(key)
        return merge_object(old, gateway_status(gw if gw is not None and not problems.get(describe(raw)) else None,
                                                resources, mine, raw.get("spec")), generation, now)
    if kind == "GatewayClass":   # read as served: a class just created is ours before the snapshot has it
        if (raw.get("spec") or {}).get("controllerName") != CONTROLLER_NAME:
            return None
        return merge_object(old, gateway_class_status(name), generation, now)
    return None


# ---- laying computed conditions over the served status --------------------------------------
def merge_conditions(old: Iterable[dict] | None, new: Iterable[Cond], generation: int, now: str) -> list[dict]:
    prev = {c.get("type"): c for c in (old or []) if isinstance(c, dict)}
    out = []
    for c in new:
        p = prev.get(c["type"])
        since = p.get("lastTransitionTime") if p and p.get("status") == c["status"] and \
            p.get("lastTransitionTime") else now
        out.append({**c, "observedGeneration": generation, "lastTransitionTime": since})
    return out


def merge_route(old_status: dict | None, ours: list[dict], generation: int, now: str) -> dict:
    """The route's whole new status: other controllers' parents as they are, then ours."""
    old_parents = [p for p in ((old_status or {}).get("parents") or []) if isinstance(p, dict)]
    others = [p for p in old_parents if p.get("controllerName") != CONTROLLER_NAME]
    mine = {_ref_key(p.get("parentRef")): p for p in old_parents if p.get("controllerName") == CONTROLLER_NAME}
    parents = list(others)
    for entry in ours:
        before = mine.get(_ref_key(entry["parentRef"]), {})
        parents.append({**entry, "conditions": merge_conditions(before.get("conditions"), entry["conditions"],
                                                                generation, now)})
    return {**(old_status or {}), "parents": parents}


def merge_object(old_status: dict | None, computed: dict, generation: int, now: str) -> dict:
    """A Gateway's or GatewayClass's new status: our conditions and fields over the old."""
    out = {**(old_status or {}), **{k: v for k, v in computed.items() if k != "conditions"}}
    if "addresses" not in computed:
        out.pop("addresses", None)
    out["conditions"] = merge_conditions((old_status or {}).get("conditions"), computed["conditions"],
                                         generation, now)
    if "listeners" in computed:   # each listener's conditions merged with the same-named one's
        before = {x.get("name"): x for x in (old_status or {}).get("listeners") or [] if isinstance(x, dict)}
        out["listeners"] = [{**x, "conditions": merge_conditions((before.get(x["name"]) or {}).get("conditions"),
                                                                 x["conditions"], generation, now)}
                            for x in computed["listeners"]]
    return out


def _ref_key(ref: Any) -> tuple:
    ref = ref if isinstance(ref, dict) else {}
    return (ref.get("group", GATEWAY_GROUP), ref.get("kind", "Gateway"), ref.get("namespace") or "",
            ref.get("name"), ref.get("sectionName"), ref.get("port"))
