"""The waypoint against a real control plane (CA, directory source, API server): it connects
with its own workload certificate, subscribes as kind "waypoint" for "<ns>/<gateway>" and
asks for its own certificate. Without its Gateway in the config it is refused: then the
waypoint keeps its bootstrap certificate, says why in /healthz, and is not ready; with it,
it gets its view and a certificate of its own."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import trio

from waypoint.app import Config, Waypoint, client_for
from wp_process import WAYPOINT_ID, issue

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controlplane"))
from cp_helpers import running_api  # noqa: E402


async def start_waypoint(ca, port: int, tmp_path: Path, nursery):
    """The waypoint default/waypoint with a bootstrap certificate from `ca`, watching the
    control plane's API on `port`: (waypoint, its control-plane client, the bootstrap bundle)."""
    bootstrap = issue(ca, WAYPOINT_ID)
    cfg = Config("default", "waypoint", "cluster.local", "waypoint", ("127.0.0.1", port), tmp_path,
                 hbone=("127.0.0.1", 0), admin=("127.0.0.1", 0), metrics=None, ready=None)
    holder = {}
    cp = client_for(cfg, lambda: holder["wp"].bundle())
    wp = holder["wp"] = Waypoint(cfg, bootstrap=bootstrap, control_plane=cp)
    await nursery.start(functools.partial(wp.run, handle_signals=False))
    return wp, cp, bootstrap


async def test_the_waypoint_subscribes_with_its_own_certificate(tmp_path):
    async with running_api(tmp_path) as (ca, source, api, port, nursery):
        wp, cp, bootstrap = await start_waypoint(ca, port, tmp_path, nursery)
        for _ in range(200):      # bounded: the first watch attempt answers within a second
            if cp.last_error:
                break
            await trio.sleep(0.05)
        assert cp.subscriber == "waypoint" and cp.node == "default/waypoint"
        # TLS with the waypoint's certificate went through: the refusal is the API's own answer
        assert WAYPOINT_ID in cp.last_error or "Gateway" in cp.last_error, cp.last_error
        assert api.stats["connections"] >= 1 and api.stats.get("tls_failures", 0) == 0
        assert wp.snapshots == 0 and (await wp._ready(None)).status == 503
        assert wp.healthz()["lastError"] == cp.last_error
        assert wp.bundle() is bootstrap   # still serving with the bootstrap certificate
        nursery.cancel_scope.cancel()


GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: trellis-waypoint}
"""


async def test_with_its_gateway_the_waypoint_gets_its_view_and_its_own_certificate(tmp_path):
    """The same waypoint once its Gateway exists: the control plane serves it its view (the
    Gateway comes back in the snapshot), signs a fresh certificate for its own identity
    (not the bootstrap one), and the waypoint turns ready."""
    from cp_helpers import write_config
    (write_config(tmp_path / "config") / "gateway.yaml").write_text(GATEWAY)
    async with running_api(tmp_path) as (ca, source, api, port, nursery):
        wp, cp, bootstrap = await start_waypoint(ca, port, tmp_path, nursery)
        for _ in range(400):      # bounded: signing and the first snapshot take well under a second
            if wp.snapshots and wp.bundle() is not bootstrap:
                break
            await trio.sleep(0.05)
        assert wp.snapshots >= 1, cp.last_error
        assert ("Gateway", "default", "waypoint") in cp.resources
        fresh = wp.bundle()
        assert fresh is not bootstrap and fresh.identity == WAYPOINT_ID and fresh.serial != bootstrap.serial
        assert (await wp._ready(None)).status == 200
        assert api.stats["waypoint_refused"] == 0 and api.stats["signed"] >= 1
        nursery.cancel_scope.cancel()
