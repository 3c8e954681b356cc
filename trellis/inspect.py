"""Fetching from the components' admin APIs and turning the answers into rows. No click
here: the commands in cli.py only pick a target, call fetch, and render."""
from __future__ import annotations

from meshcore.addr import parse_hostport as _parse_hostport

import json
from dataclasses import dataclass
from typing import Any, Callable

from meshcore import admin

from .lab import state
from .lab.topology import CP_ADMIN_PORT, ZT_ADMIN_PORT


class InspectError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    label: str            # "ztunnel/node1", "controlplane", "127.0.0.1:<port>"
    host: str
    port: int
    netns: str | None = None
    proxy: Callable[[str], Any] | None = None   # in a cluster: GET through the API server (kubeinspect.py)


def parse_hostport(text: str) -> tuple[str, int]:
    return _parse_hostport(text, "--admin")


def targets(*, node: str | None = None, control_plane: bool = False, admin_addr: str | None = None) -> list[Target]:
    """Where to ask: an explicit --admin address, else the running lab (lab.json)."""
    if admin_addr:
        host, port = parse_hostport(admin_addr)
        return [Target(admin_addr, host, port)]
    st = state.load()
    if st is None:
        raise InspectError(f"no lab running (no {state.state_file()}) and no --admin HOST:PORT given; "
                           f"start one with `trellis lab up` or point --admin at a component's admin port")
    if control_plane:
        return [Target("controlplane", "127.0.0.1", CP_ADMIN_PORT, f"{st.prefix}-fabric")]
    nodes = [n for n in st.nodes if node in (None, n["name"])]
    if not nodes:
        raise InspectError(f"no node {node!r} in the lab; nodes: {', '.join(n['name'] for n in st.nodes)}")
    return [Target(f"ztunnel/{n['name']}", "127.0.0.1", ZT_ADMIN_PORT, n["netns"]) for n in nodes]


def fetch(t: Target, path: str) -> Any:
    if t.proxy is not None:
        return t.proxy(path)
    where = f"{t.label} ({t.host}:{t.port}{f' in netns {t.netns}' if t.netns else ''})"
    try:
        status, body = admin.http_get(t.host, t.port, path, netns=t.netns, timeout=5.0)
    except ConnectionRefusedError:
        raise InspectError(f"{where}: connection refused; is it running? (`trellis lab status`)") from None
    except TimeoutError:
        raise InspectError(f"{where}: timed out; the component may be stuck, see its log") from None
    except OSError as exc:
        raise InspectError(f"{where}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise InspectError(f"{where}: {exc}") from None
    if status != 200:
        raise InspectError(f"{where}: GET {path} answered {status}: {body[:300].decode(errors='replace')}")
    try:
        return json.loads(body)
    except ValueError:
        raise InspectError(f"{where}: GET {path} did not answer JSON: {body[:200]!r}") from None


def items(data: Any, key: str) -> list[dict[str, Any]]:
    """The list under `key` whether the endpoint answers a bare list or {key: [...]}."""
    if isinstance(data, dict):
        data = data.get(key, [])
    return [d for d in (data or []) if isinstance(d, dict)]


def collect(ts: list[Target], path: str, key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows from every target, each tagged with where it came from; errors per target."""
    rows, errors = [], []
    for t in ts:
        try:
            rows += [dict(r, source=t.label) for r in items(fetch(t, path), key)]
        except InspectError as exc:
            errors.append(str(exc))
    return rows, errors


# ---- row shapes, after meshcore/state/*.py dump() ----------------------------------

WORKLOAD_COLUMNS = [("NAME", "uid"), ("ADDRESS", "address"), ("NODE", "node"), ("SERVICE ACCOUNT", "serviceAccount"),
                    ("PROTOCOL", "protocol"), ("ENROLLED", "enrolled"), ("FROM", "source")]
SERVICE_COLUMNS = [("NAME", "name"), ("CLUSTER-IP", "clusterIP"), ("PORTS", "portsText"),
                   ("ENDPOINTS", "endpoints"), ("FROM", "source")]
POLICY_COLUMNS = [("NAME", "name"), ("ACTION", "action"), ("SELECTOR", "selectorText"),
                  ("TARGETS", "targetsText"), ("RULES", "ruleCount"), ("FROM", "source")]
POD_COLUMNS = [("UID", "uid"), ("ADDRESS", "address"), ("IDENTITY", "identity"), ("STATE", "state"),
               ("CONNECTIONS", "activeConnections"), ("LISTENERS", "listeners"), ("FROM", "source")]
CERT_COLUMNS = [("IDENTITY", "identity"), ("STATE", "state"), ("SERIAL", "serial"), ("NOT AFTER", "notAfter"),
                ("REFRESH AT", "refreshAt"), ("PODS", "pods"), ("FROM", "source")]


def workload_rows(rows: list[dict], serving: dict[str, set[str]] | None = None) -> list[dict]:
    """One row per workload: every ztunnel knows every workload, so with several nodes
    asked, keep the row from the workload's own node, where `enrolled` means something
    (its uid is among that ztunnel's serving pods)."""
    serving = serving or {}
    best: dict[str, dict] = {}
    for r in rows:
        r = dict(r)
        r.setdefault("uid", f"{r.get('namespace')}/{r.get('name')}")
        own = r.get("source") == f"ztunnel/{r.get('node')}"
        r["enrolled"] = r["uid"] in serving.get(r.get("source"), set()) if r.get("source") in serving else None
        if r["uid"] not in best or own:
            best[r["uid"]] = r
    return list(best.values())


def serving_by_target(ts: list[Target]) -> dict[str, set[str]]:
    from .lab.status import serving_uids
    out = {}
    for t in ts:
        try:
            out[t.label] = serving_uids(fetch(t, "/pods"))
        except InspectError:
            pass  # an older ztunnel without /pods: leave `enrolled` unknown
    return out


def service_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        ports = [f"{p.get('port')}->{p.get('targetPort', p.get('port'))}/{p.get('protocol', 'TCP')}"
                 for p in r.get("ports") or [] if isinstance(p, dict)]
        out.append(dict(r, portsText=",".join(ports)))
    return out


def policy_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        sel = r.get("selector")
        sel_text = ",".join(f"{k}={v}" for k, v in (sel.items() if isinstance(sel, dict) else sel or []))
        refs = r.get("target_refs") or r.get("targetRefs") or []
        targets_text = ",".join("/".join(map(str, x.values() if isinstance(x, dict) else x)) for x in refs)
        # no selector: the whole namespace, unless targetRefs name what it applies to
        out.append(dict(r, selectorText=sel_text or ("" if refs else "(namespace)" if sel is None else "(all)"),
                        targetsText=targets_text, ruleCount=len(r.get("rules") or [])))
    return out


def cert_rows(rows: list[dict]) -> list[dict]:
    keys = {"notBefore": ("not_before", "validFrom"), "notAfter": ("not_after", "expires", "validTo")}
    out = []
    for r in rows:
        r = dict(r)
        for want, alts in keys.items():
            if want not in r:
                r[want] = next((r[a] for a in alts if a in r), None)
        out.append(r)
    return out


KINDS = {
    "workloads": ("/workloads", "workloads", WORKLOAD_COLUMNS, workload_rows),
    "services": ("/services", "services", SERVICE_COLUMNS, service_rows),
    "policies": ("/policies", "policies", POLICY_COLUMNS, policy_rows),
    "certs": ("/certs", "certs", CERT_COLUMNS, cert_rows),
    "pods": ("/pods", "pods", POD_COLUMNS, list),
}
