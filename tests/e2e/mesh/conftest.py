"""One lab for the whole mesh package: bringing one up costs seconds, tests share it and
restore whatever config they change."""
from pathlib import Path

import pytest

from e2e.labctl import running

LAB_DIR = Path(__file__).resolve().parents[1] / "lab"


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-mesh", "tte2e") as lab:
        yield lab
