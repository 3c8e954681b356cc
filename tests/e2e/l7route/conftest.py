"""One lab for the L7 routing tests (own state dir and name prefix), with the namespace's
waypoint made by `trellis waypoint apply --enroll-namespace` and ready before any test."""
import json
from pathlib import Path

import pytest

from e2e.labctl import running, wait_until

LAB_DIR = Path(__file__).resolve().parent / "lab"


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-l7route", "ttlr") as lab:
        lab.cli("waypoint", "apply", "-n", "default", "--enroll-namespace")
        wait_until(lambda: json.loads(lab.cli("waypoint", "status", "-n", "default", "-o", "json").stdout)[0]
                   ["ready"] >= 1, "default/waypoint ready", timeout=90)
        yield lab
