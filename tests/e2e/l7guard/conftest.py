"""One lab for the l7guard tests (own state dir and name prefix), with the namespace's
waypoint applied by `trellis waypoint apply -n default --enroll-namespace` as a user would."""
import json

import pytest

from e2e.labctl import running, wait_until

from e2e.l7guard.guardlab import LAB_DIR, WEB, GuardLab


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-l7guard", "ttlg", cls=GuardLab) as lab:
        lab.apply_waypoint("default", timeout=60)
        wp_ip = lab.waypoint_pod()["address"]
        # the callers' ztunnels send the Services' traffic to it (the app sees the waypoint)
        wait_until(lambda: json.loads(lab.curl("client", f"http://{WEB}/").stdout)["client"]
                   .startswith(wp_ip + ":"), "traffic to web through the waypoint", timeout=60)
        yield lab

