"""Prepare an enrolled pod's netns so that ztunnel can hand the app its caller's address.

The rules are meshcore.inpod's (Istio's in-pod marks and table); this module runs them
inside the pod's netns with `nsenter --net=...`, as a CNI plugin would. Installing is
idempotent (the nft table is replaced in one transaction, the route with `replace`, the
rule added only when absent) and ordered so that the policy rule, the one ztunnel checks
for, comes last; removal goes the other way. Failures are reported, never fatal: without
the rules ztunnel finds no route back and delivers from the pod's own address.
"""
from __future__ import annotations

import json
import logging

import trio

from meshcore import inpod
from meshcore.netns import netns_path

log = logging.getLogger("trellis.nodeagent.inpod")

TIMEOUT = 10.0


class InpodError(RuntimeError):
    pass


async def _run(netns: str, argv: list[str], stdin: bytes = b"") -> str:
    cmd = ["nsenter", f"--net={netns_path(netns)}", *argv]
    try:
        with trio.fail_after(TIMEOUT):
            res = await trio.run_process(cmd, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError:
        raise InpodError(f"`{cmd[0]}` not found; install util-linux (nsenter), nftables and iproute2") from None
    except trio.TooSlowError:
        raise InpodError(f"`{' '.join(argv)}` in netns {netns} took over {TIMEOUT:g}s") from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip()
        if "No such file or directory" in err and argv[0] in ("nft", "ip"):
            err += f" (is `{argv[0]}` installed? scripts/setup installs it)"
        raise InpodError(f"`{' '.join(argv)}` in netns {netns} failed: {err}")
    return res.stdout.decode(errors="replace")


async def install(netns: str) -> None:
    """Set up the marks, the route table and the rule; raises InpodError naming the step."""
    await _run(netns, ["nft", "-f", "-"], inpod.nft_ruleset().encode())
    for family, prefix in inpod.FAMILIES:
        try:
            await _run(netns, inpod.route_argv(family, prefix))
            if not json.loads(await _run(netns, inpod.rule_list_argv(family)) or "[]"):
                await _run(netns, inpod.rule_add_argv(family))
        except InpodError:
            if family == "-6":   # a pod without IPv6 is common; IPv4 is what must work
                continue
            raise


async def remove(netns: str) -> None:
    """Undo `install`, rule first; what is already gone is not an error."""
    for family, _ in inpod.FAMILIES:
        for _ in range(8):   # an interrupted earlier install may have added it more than once
            try:
                await _run(netns, inpod.rule_del_argv(family))
            except InpodError:
                break
        try:
            await _run(netns, inpod.route_flush_argv(family))
        except InpodError:
            pass
    await _run(netns, ["nft", "-f", "-"], inpod.nft_delete().encode())


async def try_install(uid: str, netns: str) -> bool:
    try:
        await install(netns)
    except InpodError as e:
        log.warning("pod %s: in-pod routing for callers' addresses not set up (%s); ztunnel will deliver "
                    "its connections from the pod's own address", uid, e)
        return False
    return True


async def try_remove(uid: str, netns: str) -> None:
    try:
        if netns_path(netns).exists():
            await remove(netns)
    except InpodError as e:
        log.warning("pod %s: removing in-pod routing failed: %s", uid, e)

