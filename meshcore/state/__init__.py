"""The data plane's view of the mesh (ztunnel's and the waypoint's): one module per resource
kind, indexed by `store.State` (service -> endpoints, address -> workload, policies)."""
from .policies import AuthzPolicy, Condition, Operation, Rule, Source
from .services import Service, ServicePort
from .store import State
from .workloads import Workload

__all__ = ["AuthzPolicy", "Condition", "Operation", "Rule", "Source", "Service", "ServicePort", "State", "Workload"]
