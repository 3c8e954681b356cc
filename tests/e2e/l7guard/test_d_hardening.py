"""Hardening of a real waypoint under attack from a client pod: request smuggling (CL+TE,
TE+CL, two different Content-Lengths) gets 400 and a closed connection, oversized header
blocks 431, an HTTP/2 rapid-reset flood (CVE-2023-44487) GOAWAY ENHANCE_YOUR_CALM; the
smuggled requests never reach the app; meanwhile another pod's loop, a new connection per
request through the same waypoint, gets only 200s, and the waypoint process stays up."""
import time

from meshcore import admin
from e2e.l7guard.guardlab import WEB, echo_log


def test_attacks_are_refused_while_another_client_is_served(lab):
    proc = lab.waypoint_proc()
    restarts = proc.get("restarts", 0)
    watcher = lab.start("watcher", "loop", f"http://{WEB}/", "--duration", "7", "--interval", "0.02")
    time.sleep(2.0)   # the loop is running (lab exec and the interpreter start first)
    attack = lab.run("client", "attack", WEB, "80", "--streams", "1000", "--floods", "3")
    loop = lab.result(watcher)

    for name in ("cl_te", "te_cl", "dup_cl"):
        assert attack[name]["statuses"] == ["400"] and attack[name]["closed"], (name, attack[name])
    assert "smuggling" in attack["cl_te"]["head"] and "Content-Length" in attack["dup_cl"]["head"]
    for name in ("big_header", "many_headers"):
        assert attack[name]["statuses"] == ["431"] and attack[name]["closed"], (name, attack[name])
    for flood in attack["rapid_reset"]:
        assert flood["goaway"] == "ENHANCE_YOUR_CALM" and flood["closed"], flood
    log = echo_log(lab, "web-1")
    assert "/smuggled" not in log and "SMUGGLED" not in log

    # the other client: served throughout, and it did run across the attacks
    assert loop["failures"] == [], loop["failures"][:5]
    assert set(loop["statuses"]) == {"200"} and loop["statuses"]["200"] >= 50, loop["statuses"]
    # the waypoint did not restart and is ready
    after = lab.waypoint_proc()
    assert after["pid"] == proc["pid"] and after.get("restarts", 0) == restarts
    status, _ = admin.http_get("127.0.0.1", 15021, "/healthz/ready", netns=lab.waypoint_pod()["netns"])
    assert status == 200
