"""The in-pod routing contract between the node agent and ztunnel (sans-IO).

ztunnel delivers an inbound connection to the app from the *caller's* address: a socket
with IP_TRANSPARENT, bound to the client pod's IP, connected to the app inside the
destination pod's netns. The app's replies go to an address that is not local to the pod,
so without help they would leave through the pod's default route. The node agent
therefore prepares each enrolled pod's netns the way Istio's CNI agent does in-pod:

- ztunnel marks its transparent sockets with `ZTUNNEL_MARK`;
- nftables, on prerouting (where ztunnel's SYN arrives over lo), copies that into the
  connection's conntrack mark as `TPROXY_MARK`, and on output restores it onto every
  packet of that connection, so the app's replies carry `TPROXY_MARK`;
- a policy rule sends packets with `TPROXY_MARK` to `ROUTE_TABLE`, whose only route is
  `local 0.0.0.0/0 dev lo`: the replies come back in, to ztunnel's socket.

Only packets of connections ztunnel opened with the mark are touched. The marks and
numbers are Istio's, so an operator who knows one knows the other. This module builds
the commands; the node agent runs them (nodeagent/inpod.py) and ztunnel checks the route
before relying on it (ztunnel/transparent.py).
"""
from __future__ import annotations

ZTUNNEL_MARK = 0x539      # SO_MARK on ztunnel's transparent sockets (Istio's InpodMark, 1337)
TPROXY_MARK = 0x111       # conntrack / packet mark of those connections (Istio's InpodTProxyMark)
MARK_MASK = 0xFFF         # the bits the mesh owns; other bits of a mark are left alone
ROUTE_TABLE = 100         # Istio's RouteTableInbound
RULE_PREF = 32764         # before `main` (32766), as Istio
NFT_TABLE = "trellis_inpod"  # family inet: IPv4 and IPv6 with one table

# IPv4 and IPv6: (ip family flag, the catch-all prefix of the local route).
FAMILIES = (("-4", "0.0.0.0/0"), ("-6", "::/0"))


def nft_ruleset() -> str:
    """nft -f input that (re)creates the table atomically: `add` makes the `delete` safe
    when it does not exist yet, and the whole file is one transaction."""
    keep = 0xFFFFFFFF & ~MARK_MASK
    return (
        f"add table inet {NFT_TABLE}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        f"  chain prerouting {{\n"
        f"    type filter hook prerouting priority mangle;\n"
        f"    meta mark and {MARK_MASK:#x} == {ZTUNNEL_MARK:#x} ct mark set ct mark and {keep:#x} or {TPROXY_MARK:#x}\n"
        f"  }}\n"
        f"  chain output {{\n"
        f"    type route hook output priority mangle;\n"
        f"    ct mark and {MARK_MASK:#x} == {TPROXY_MARK:#x} meta mark set meta mark and {keep:#x} or {TPROXY_MARK:#x}\n"
        f"  }}\n"
        f"}}\n")


def nft_delete() -> str:
    return f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"


def route_argv(family: str, prefix: str) -> list[str]:
    """`ip route replace` is idempotent by itself."""
    return ["ip", family, "route", "replace", "local", prefix, "dev", "lo", "table", str(ROUTE_TABLE)]


def rule_selector() -> list[str]:
    return ["fwmark", f"{TPROXY_MARK:#x}/{MARK_MASK:#x}", "pref", str(RULE_PREF), "lookup", str(ROUTE_TABLE)]


def rule_add_argv(family: str) -> list[str]:
    return ["ip", family, "rule", "add", *rule_selector()]


def rule_del_argv(family: str) -> list[str]:
    return ["ip", family, "rule", "del", *rule_selector()]


def rule_list_argv(family: str) -> list[str]:
    return ["ip", "-j", family, "rule", "list", "pref", str(RULE_PREF)]


def route_flush_argv(family: str) -> list[str]:
    return ["ip", family, "route", "flush", "table", str(ROUTE_TABLE)]
