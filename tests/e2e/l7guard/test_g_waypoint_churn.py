"""`trellis waypoint delete` and `apply` again and again under traffic (after test_f put the
waypoint back): loops with a new connection per request from a pod on each node (so the
caller's ztunnel, the destination's and the waypoint learn of each change at different
moments) and not one request fails. Each switch is a race between the config reaching the
callers' ztunnels, the destination's ztunnel and the waypoint; many fresh connections make
a wrong order show."""
import json
import time
from pathlib import Path

from e2e.labctl import wait_until
from e2e.l7guard.guardlab import WEB

CYCLES = 2


def errors_logged(lab) -> list[str]:
    """The ztunnels' and waypoints' failed connections and refusals, to say which side failed."""
    out = []
    for p in lab.state()["procs"]:
        if not p["name"].startswith(("ztunnel", "waypoint")):
            continue
        try:
            text = Path(p["log"]).read_text(errors="replace")
        except OSError:
            continue
        out += [f"{p['name']}: {line[:400]}" for line in text.splitlines()
                if '"outcome": "error"' in line or "refused" in line or "bypass" in line
                or "applied config version" in line]
    return out


def waypoints(lab) -> list[dict]:
    return [p for p in lab.state()["pods"] if p.get("waypoint")]


def test_waypoint_delete_and_apply_repeated_without_a_failed_request(lab):
    assert waypoints(lab), "test_f should have applied the waypoint"
    seen_before = set(errors_logged(lab))
    for cycle in range(CYCLES):
        wp_ip = lab.waypoint_pod()["address"]
        loops = {pod: lab.start(pod, "loop", f"http://{WEB}/", "--duration", "20", "--interval", "0")
                 for pod in ("client", "watcher")}
        for proc in loops.values():
            lab.started(proc)
        time.sleep(2.0)
        lab.cli("waypoint", "delete", "-n", "default")
        wait_until(lambda: not waypoints(lab), "the waypoint pod removed", timeout=30)
        time.sleep(1.0)
        t0 = time.monotonic()
        lab.cli("waypoint", "apply", "-n", "default", "--enroll-namespace", "--timeout", "60")
        applied_in = time.monotonic() - t0
        results = {pod: lab.result(proc) for pod, proc in loops.items()}
        new_wp = lab.waypoint_pod()["address"]
        new = [e for e in errors_logged(lab) if e not in seen_before]
        for pod, res in results.items():
            assert res["failures"] == [], (f"cycle {cycle}, {pod}: {res['failures'][:5]}; the ztunnels' and "
                                           "waypoint's log:\n" + "\n".join(new[-40:]))
            # both switches happened while the loop ran: waypoint, the pod itself, waypoint
            path = [c[0] for c in res["clients"]]
            assert path == [wp_ip, lab.ip(pod), new_wp], (cycle, pod, res["clients"], f"apply took {applied_in:.1f}s")
    wait_until(lambda: json.loads(lab.curl("client", f"http://{WEB}/").stdout)["client"].startswith(
        lab.waypoint_pod()["address"] + ":"), "traffic through the waypoint at the end", timeout=30)
