"""One lab for the waypoint tests (own state dir and name prefix)."""
from pathlib import Path

import pytest

from e2e.labctl import running

LAB_DIR = Path(__file__).resolve().parent / "lab"


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-waypoint", "ttwp") as lab:
        yield lab
