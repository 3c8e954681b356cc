"""Small builders for the state the pure tests route and authorize against."""
from meshcore.mesh import AMBIENT, enrollment
from meshcore.resources import AMBIENT_LABEL
from meshcore.state import AuthzPolicy, Operation, Rule, Service, ServicePort, Source, State, Workload


def wl(name, ip, ns="default", sa=None, mesh=True, **labels):
    """A workload in a namespace that is (mesh=True) or is not labelled for the mesh."""
    e = enrollment(ns, {AMBIENT_LABEL: AMBIENT} if mesh else {}, labels)
    return Workload(namespace=ns, name=name, address=ip, service_account=sa or name, node="node1",
                    labels=labels or {"app": name}, in_mesh=e.in_mesh, mesh_reason=e.reason)


def svc(name, vip, ns="default", ports=((80, 8080),), **selector):
    return Service(namespace=ns, name=name, cluster_ip=vip, selector=selector or {"app": name},
                   ports=tuple(ServicePort(p, t, name=f"p{p}") for p, t in ports))


def pol(name, action="ALLOW", ns="default", selector=None, refs=(), rules=()):
    return AuthzPolicy(namespace=ns, name=name, action=action,
                       selector=tuple(sorted(selector.items())) if selector is not None else None,
                       target_refs=tuple(refs), rules=tuple(rules))


def rule(principals=(), namespaces=(), not_principals=(), not_namespaces=(), ports=(), not_ports=(),
         methods=(), paths=()):
    src = Source(tuple(principals), tuple(not_principals), tuple(namespaces), tuple(not_namespaces))
    op = Operation(tuple(ports), tuple(not_ports), tuple(methods), tuple(paths))
    has_src = any((principals, namespaces, not_principals, not_namespaces))
    has_op = any((ports, not_ports, methods, paths))
    return Rule(from_=(src,) if has_src else (), to=(op,) if has_op else ())


def mesh():
    """default: client, web-1, web-2 (service web), db; legacy ns not enrolled; empty svc."""
    workloads = [
        wl("client", "10.244.1.2"),
        wl("web-1", "10.244.1.3", sa="web", app="web"),
        wl("web-2", "10.244.2.3", sa="web", app="web"),
        wl("db", "10.244.2.4"),
        wl("old", "10.244.2.9", ns="legacy", mesh=False),
        wl("other-ns", "10.244.2.10", ns="shop", sa="cart", app="web"),
    ]
    services = [
        svc("web", "10.96.0.10", ports=((80, 8080), (443, 8443))),
        svc("db", "10.96.0.11", ports=((5432, 5432),)),
        svc("old", "10.96.0.12", ns="legacy"),
        svc("empty", "10.96.0.13", app="nothing"),
        svc("headless", None),
    ]
    return State(workloads=workloads, services=services, enrolled_namespaces=frozenset({"default", "shop"}))
