"""A node's ztunnel dies (kill -9): the lab's supervisor starts it again by itself, the
node agent hands it the node's pods, `lab status` counts the restart, traffic flows."""
import json
import os
import signal

from e2e.labctl import wait_until


def ztunnel_row(lab, node):
    report = json.loads(lab.cli("lab", "status", "-o", "json", check=False).stdout)
    return next(c for c in report["components"] if c["name"] == f"ztunnel/{node}")


def test_a_killed_ztunnel_comes_back_by_itself_and_traffic_flows_again(lab):
    before = ztunnel_row(lab, "node2")
    assert before["up"]
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_until(lambda: (r := ztunnel_row(lab, "node2"))["up"] and r["pid"] != before["pid"] and r,
                       "the supervisor to restart node2's ztunnel", timeout=30)
    assert after["restarts"] == before["restarts"] + 1
    for pod in ("web-1", "web-2", "tcp-echo"):
        lab.wait_enrolled("node2", f"default/{pod}", timeout=30)

    def served():
        res = lab.curl("sleep", "http://10.96.0.10/after-restart")
        return res.returncode == 0 and json.loads(res.stdout)["path"] == "/after-restart"
    wait_until(served, "requests through the restarted ztunnel", timeout=30)
    table = lab.cli("lab", "status").stdout
    row = next(line for line in table.splitlines() if line.startswith("ztunnel/node2"))
    assert f" {after['restarts']} " in row, row
