"""The lab's waypoint controller lists a waypoint pod (its WorkloadEntry, which callers'
ztunnels route by) only once the pod has been ready, and keeps it listed while it runs."""
from types import SimpleNamespace

import yaml

from trellis.lab.waypointpods import ENTRIES_FILE, WaypointController


def pod(name: str) -> dict:
    return {"name": name, "namespace": "default", "node": "node1", "address": f"10.244.1.{len(name)}",
            "netns": f"t-{name}", "cgroup": "/x", "waypoint": "waypoint", "serviceAccount": "waypoint"}


def listed(tmp_path) -> list[str]:
    path = tmp_path / "config" / ENTRIES_FILE
    return [d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text()) if d] if path.exists() else []


def test_a_pod_is_listed_once_ready_and_stays_listed(tmp_path):
    (tmp_path / "config").mkdir()
    ready = {"waypoint-0": False, "waypoint-1": True}
    ctl = WaypointController(tmp_path, ready=lambda p: ready[p["name"]])
    st = SimpleNamespace(pods=[pod("waypoint-0"), pod("waypoint-1")],
                         procs=[SimpleNamespace(name="waypoint/default/waypoint-0"),
                                SimpleNamespace(name="waypoint/default/waypoint-1")])
    ctl.write_entries(st)
    assert listed(tmp_path) == ["waypoint-1"]          # still starting: callers do not see it yet
    ready["waypoint-0"] = True
    ctl.write_entries(st)
    assert listed(tmp_path) == ["waypoint-0", "waypoint-1"]
    ready["waypoint-0"] = False                         # draining, or a slow probe: no flapping
    ctl.write_entries(st)
    assert listed(tmp_path) == ["waypoint-0", "waypoint-1"]
    ctl.write_entries(st, skip={("default", "waypoint-1")})   # being removed: unlisted first
    assert listed(tmp_path) == ["waypoint-0"]
    st.procs.pop()   # waypoint-1's process is gone
    ctl.write_entries(st)
    assert listed(tmp_path) == ["waypoint-0"]
