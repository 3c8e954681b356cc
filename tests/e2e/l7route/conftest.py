"""One lab for the L7 routing tests (own state dir and name prefix), with the namespace's
waypoint made by `trellis waypoint apply --enroll-namespace` and ready before any test."""
from pathlib import Path

import pytest

from e2e.labctl import running

LAB_DIR = Path(__file__).resolve().parent / "lab"


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-l7route", "ttlr") as lab:
        lab.apply_waypoint("default", timeout=90)
        yield lab
