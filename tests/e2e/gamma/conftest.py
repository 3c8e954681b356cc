"""One lab for the GAMMA status tests (own state dir and name prefix), with namespace mesh's
waypoint made by `trellis waypoint apply --enroll-namespace` and ready before any test."""
import json
from pathlib import Path

import pytest

from e2e.labctl import running, wait_until

LAB_DIR = Path(__file__).resolve().parent / "lab"


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-gamma", "ttgm") as lab:
        lab.cli("waypoint", "apply", "-n", "mesh", "--enroll-namespace")
        wait_until(lambda: json.loads(lab.cli("waypoint", "status", "-n", "mesh", "-o", "json").stdout)[0]
                   ["ready"] >= 1, "mesh/waypoint ready", timeout=90)
        yield lab
