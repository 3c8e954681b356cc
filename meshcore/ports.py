"""Every port number of the mesh, in one place (docs/internals.md "Names, ports, addresses").

As in Istio, so operators feel at home. Python components import these; the eBPF
programs get them as `-D` definitions at compile time (`bpf_defines()`), so the C side
cannot drift from the Python side.
"""
from __future__ import annotations

OUTBOUND = 15001      # ztunnel's outbound capture listener inside each pod's netns (loopback)
INBOUND_PLAIN = 15006  # ztunnel inbound plaintext (reserved; PERMISSIVE reaches the app directly)
HBONE = 15008         # HBONE inbound, inside each pod's netns
ZTUNNEL_ADMIN = 15000  # ztunnel admin HTTP (127.0.0.1, node netns)
METRICS = 15020       # Prometheus metrics (node netns)
READY = 15021         # readiness GET /healthz/ready (node netns)
CONTROL_PLANE = 15012  # control plane API (mTLS, JSON lines)
CONTROL_PLANE_ADMIN = 15010  # control plane admin HTTP (127.0.0.1)

# The names bpf/include/config.h uses for the ports the eBPF programs must know.
_BPF_NAMES = {"CAPTURE_PORT": OUTBOUND, "INBOUND_PLAIN_PORT": INBOUND_PLAIN, "HBONE_PORT": HBONE,
              "METRICS_PORT": METRICS, "READY_PORT": READY}


def bpf_defines() -> list[str]:
    """The `-DNAME=value` cflags that give bpf/ its port numbers."""
    return [f"-D{name}={value}" for name, value in _BPF_NAMES.items()]
