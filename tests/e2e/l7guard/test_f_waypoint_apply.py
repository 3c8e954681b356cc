"""`trellis waypoint apply --enroll-namespace` under traffic (after test_e removed the
package's waypoint): a loop with a new connection per request runs across it and not one
request fails; the app sees the client pod itself, then the waypoint. The lab lists the new
pod only once it is ready, and the CLI labels the namespace only then."""
import time

from e2e.l7guard.guardlab import WEB


def test_waypoint_apply_under_traffic_without_a_failed_request(lab):
    assert not [p for p in lab.state()["pods"] if p.get("waypoint")], "test_e should have removed the waypoint"
    loop = lab.started(lab.start("watcher", "loop", f"http://{WEB}/", "--duration", "14"))
    time.sleep(2.0)
    lab.cli("waypoint", "apply", "-n", "default", "--enroll-namespace", "--timeout", "60")
    res = lab.result(loop)
    wp_ip = lab.waypoint_pod()["address"]
    assert res["failures"] == [], res["failures"][:5]
    assert [c[0] for c in res["clients"]] == [lab.ip("watcher"), wp_ip], res["clients"]
    assert all(c[2] >= 20 for c in res["clients"]), res["clients"]
